variable "name" {
  type        = string
  default     = "cryptoserver"
  description = "Name of this cryptoserver, used in resource names and tags. Unique per account and region: the snapshot policy selects the volume by it."

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9-]{0,31}$", var.name))
    error_message = "name is 1 to 32 letters, digits or dashes, starting with a letter or digit (IAM role name prefixes are short)."
  }
}

variable "ami_id" {
  type        = string
  description = "The cryptoserver image built by packer/cryptoserver.pkr.hcl (its id is in target/dist/packer-manifest.json). A new id replaces the instance; the secrets volume is kept."

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8}([0-9a-f]{9})?$", var.ami_id))
    error_message = "ami_id is an image id such as ami-0123456789abcdef0."
  }
}

variable "subnet_id" {
  type        = string
  description = "Private subnet of the instance; its VPC and availability zone are used for the security group and the secrets volume."

  validation {
    condition     = can(regex("^subnet-[0-9a-f]{8}([0-9a-f]{9})?$", var.subnet_id))
    error_message = "subnet_id is a subnet id such as subnet-0123456789abcdef0."
  }
}

variable "instance_type" {
  type        = string
  default     = "m7i.large"
  description = "x86_64 Nitro instance type. Nitro, because the first-boot script finds the secrets volume by its NVMe id."

  validation {
    condition     = !can(regex("^(t1|t2|m1|m2|m3|m4|c1|c3|c4|r3|r4|i2|d2|x1|x1e|g2|g3|p2|h1)\\.", var.instance_type))
    error_message = "instance_type must be a Nitro type (m7i.large, c7i.large, t3.medium...): on Xen types the secrets volume has no NVMe id to find it by."
  }
  validation {
    condition     = !can(regex("^[a-z]+[0-9]+g[a-z]*\\.", var.instance_type))
    error_message = "instance_type must be x86_64: the image and its binaries are built for x86_64, not Graviton (arm64)."
  }
}

variable "mode" {
  type        = string
  default     = "MODE32"
  description = "How many secrets: MODE0 (one key), MODE16 (65,536 keys in 2 MiB), MODE32 (2^32 keys, 128 GiB) or MODE32X (MODE32's files, each MAC keyed from 8 of them: see the README). Fixed for the life of the secrets volume."

  validation {
    condition     = contains(["MODE0", "MODE16", "MODE32", "MODE32X"], upper(var.mode))
    error_message = "mode is MODE0, MODE16, MODE32 or MODE32X."
  }
}

variable "port" {
  type        = number
  default     = 8080
  description = "TCP port the service listens on, the only port open to clients. At least 1024: the server runs without any capability."

  validation {
    condition     = var.port == floor(var.port) && var.port >= 1024 && var.port <= 65535
    error_message = "port is a whole number from 1024 to 65535 (the server has no capability to bind lower ports)."
  }
}

variable "allowed_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "IPv4 networks of the clients allowed to reach the service port."

  validation {
    condition     = alltrue([for cidr in var.allowed_cidr_blocks : can(cidrnetmask(cidr))])
    error_message = "allowed_cidr_blocks holds IPv4 CIDR blocks such as 10.0.0.0/16."
  }
}

variable "allowed_ipv6_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "IPv6 networks of the clients allowed to reach the service port. Non-empty: the instance gets an IPv6 address (the subnet must have an IPv6 block) and the server listens on IPv6 and IPv4."

  validation {
    condition     = alltrue([for cidr in var.allowed_ipv6_cidr_blocks : can(cidrhost(cidr, 0)) && strcontains(cidr, ":")])
    error_message = "allowed_ipv6_cidr_blocks holds IPv6 CIDR blocks such as 2001:db8::/56."
  }
}

variable "allowed_security_group_ids" {
  type        = list(string)
  default     = []
  description = "Security groups of the clients allowed to reach the service port."

  validation {
    condition     = alltrue([for id in var.allowed_security_group_ids : can(regex("^sg-[0-9a-f]{8}([0-9a-f]{9})?$", id))])
    error_message = "allowed_security_group_ids holds security group ids such as sg-0123456789abcdef0."
  }
}

variable "metrics_port" {
  type        = number
  default     = null
  description = "Port of the Prometheus metrics endpoint (GET /metrics, no token), open to the same clients as the service; null serves no metrics."

  validation {
    condition     = var.metrics_port == null || try(var.metrics_port == floor(var.metrics_port) && var.metrics_port >= 1024 && var.metrics_port <= 65535 && var.metrics_port != var.port, false)
    error_message = "metrics_port is null, or a whole number from 1024 to 65535 other than port."
  }
}

variable "token_sha256_digests" {
  type        = list(string)
  default     = []
  description = "SHA-256 digests (hex) of the bearer tokens clients must send, one per client, as printed by `cargo xtask gen-token`. Empty: no token is needed, the security group is the only gate. Digests are not secret; the tokens never reach AWS."

  validation {
    condition     = alltrue([for digest in var.token_sha256_digests : can(regex("^[0-9a-f]{64}$", digest))])
    error_message = "token_sha256_digests holds 64 lower-case hex digits per token, the line `cargo xtask gen-token` prints for the tokens file."
  }
}

variable "clients" {
  type = list(object({
    name                 = string
    token_sha256_digests = list(string)
    namespace            = optional(string)
    routes               = optional(list(string))
    rate                 = optional(object({ per_second = number, burst = optional(number) }))
  }))
  default     = []
  description = "Named clients (docs/clients.md): each a name, the SHA-256 digests of its one or two tokens (two while it rotates), and optionally its namespace, its routes (of hmac, batch, verify) and its own rate limit. Written to the clients file after token_sha256_digests' unnamed lines."

  validation {
    condition     = alltrue([for client in var.clients : can(regex("^[a-z0-9][a-z0-9._-]{0,62}$", client.name)) && (client.namespace == null || can(regex("^[a-z0-9][a-z0-9._-]{0,62}$", client.namespace)))])
    error_message = "Each client's name and namespace match [a-z0-9][a-z0-9._-]{0,62}: lower-case letters, digits, dots, underscores and dashes, starting with a letter or digit."
  }
  validation {
    condition     = length(distinct([for client in var.clients : client.name])) == length(var.clients)
    error_message = "Two clients have one name: give a client's second token as its second token_sha256_digests entry."
  }
  validation {
    condition     = alltrue([for client in var.clients : contains([1, 2], length(client.token_sha256_digests)) && alltrue([for digest in client.token_sha256_digests : can(regex("^[0-9a-f]{64}$", digest))])])
    error_message = "Each client has one or two token_sha256_digests (two while its token rotates), each 64 lower-case hex digits, the line `cargo xtask gen-token` prints."
  }
  validation {
    condition     = alltrue([for client in var.clients : client.routes == null || (length(coalesce(client.routes, [])) > 0 && length(setsubtract(coalesce(client.routes, []), ["hmac", "batch", "verify"])) == 0)])
    error_message = "A client's routes are some of hmac, batch and verify (leave routes out for all three)."
  }
  validation {
    condition     = alltrue([for client in var.clients : client.rate == null || try(client.rate.per_second >= 0.001 && client.rate.per_second <= 1000000000 && coalesce(client.rate.burst, client.rate.per_second) >= 1 && coalesce(client.rate.burst, client.rate.per_second) <= 4294967295, false)])
    error_message = "A client's rate has per_second from 0.001 to 1e9 and burst from 1 to 4294967295 (burst defaults to per_second: below 1 request/s, give a burst)."
  }
  validation {
    condition     = length(distinct(concat(var.token_sha256_digests, flatten([for client in var.clients : client.token_sha256_digests])))) == length(concat(var.token_sha256_digests, flatten([for client in var.clients : client.token_sha256_digests])))
    error_message = "A token digest is given twice (in token_sha256_digests or clients): each token belongs to one client."
  }
}

variable "clients_serial" {
  type        = number
  default     = 0
  description = "The clients file's serial (its serial=N line): raise it with every change of the clients, above the serial of the last signed document pushed, so that a host's kept document and the user data agree on which is newer."

  validation {
    condition     = var.clients_serial >= 0 && var.clients_serial <= 9223372036854775807 && floor(var.clients_serial) == var.clients_serial
    error_message = "clients_serial is a whole number from 0 to 2^63-1."
  }
}

variable "clients_signer" {
  type        = string
  default     = null
  description = "The minisign public key (the second line of minisign.pub, 56 characters starting with RW) whose signed clients documents the hosts accept on PUT /admin/clients (CRYPTOSERVER_CLIENTS_SIGNER); null: no signed updates."

  validation {
    condition     = var.clients_signer == null || can(regex("^RW[A-Za-z0-9+/]{54}$", var.clients_signer))
    error_message = "clients_signer is the second line of minisign.pub: 56 base64 characters starting with RW (not the untrusted comment line, never the secret key)."
  }
  validation {
    condition     = var.clients_signer == null || length(var.token_sha256_digests) + length(var.clients) > 0
    error_message = "clients_signer needs at least one client (clients or token_sha256_digests): the hosts apply signed documents over a clients file."
  }
}

variable "environment" {
  type        = map(string)
  default     = {}
  description = "Further server settings (README.md, Configuration), such as CRYPTOSERVER_RATE_LIMIT = \"200:1000\". Never a secret: user data is readable by anyone who can describe the instance."

  validation {
    condition     = alltrue([for key, value in var.environment : can(regex("^(CRYPTOSERVER_[A-Z_]+|RUST_LOG)$", key)) && !strcontains(value, "\n")])
    error_message = "environment keys are CRYPTOSERVER_* settings or RUST_LOG, and values are single lines."
  }
  validation {
    condition     = length(setintersection(keys(var.environment), ["CRYPTOSERVER_MODE", "CRYPTOSERVER_BIND", "CRYPTOSERVER_SECRETDIR", "CRYPTOSERVER_TOKENS_FILE", "CRYPTOSERVER_CLIENTS_FILE", "CRYPTOSERVER_CLIENTS_SIGNER", "CRYPTOSERVER_METRICS_BIND", "CRYPTOSERVER_SECRETS_VOLUME_ID", "CRYPTOSERVER_SECRETS_DEVICE", "CRYPTOSERVER_SECRETS_VERIFY", "CRYPTOSERVER_SECRETS_TLS_NAME", "CRYPTOSERVER_SECRETS_ROLE", "CRYPTOSERVER_SECRETS_HOT_COPY"])) == 0
    error_message = "environment cannot set what the module manages: use mode, port, token_sha256_digests, clients, clients_signer, metrics_port, verify_secrets_on_boot, tls and hot_copy instead (the host is the origin of its secrets: a replica comes from modules/pool)."
  }
  validation {
    condition     = alltrue([for key in keys(var.environment) : !startswith(key, "CRYPTOSERVER_TLS_")])
    error_message = "environment cannot set CRYPTOSERVER_TLS_*: no file user data could name holds a key on the host. Set tls = true: the host makes its own key at first boot (module README, TLS)."
  }
}

variable "tls" {
  type        = bool
  default     = true
  description = "Serve HTTPS with a key the host makes at first boot on the secrets volume (never in user data) and a self-signed certificate for the DNS name `name`, printed with its SHA-256 fingerprint to the serial console for clients to pin (README, TLS). false: plain HTTP, bearer tokens in clear."
}

variable "hot_copy" {
  type        = bool
  default     = false
  description = "Copy the secrets at every boot to the instance's local NVMe disk (instance store), verifying them while copying, and serve from there; the EBS volume stays the durable copy. The instance type needs an NVMe instance-store SSD that holds the mode's secrets (MODE32 and MODE32X: 140 GB; checked at plan). One more copy on the host, encrypted by the Nitro system with a key that dies with the instance (README, Hot copy)."
}

variable "data_volume_size" {
  type        = number
  default     = 160
  description = "Size of the secrets volume in GiB. MODE32 and MODE32X need at least 130 (128 GiB of secrets in ext4); MODE0 and MODE16 need 1."

  validation {
    condition     = var.data_volume_size == floor(var.data_volume_size) && var.data_volume_size >= (contains(["MODE32", "MODE32X"], upper(var.mode)) ? 130 : 1) && var.data_volume_size <= 65536
    error_message = "data_volume_size is too small for the mode: MODE32 and MODE32X write 65,536 files of 2 MiB (128 GiB), so the volume needs at least 130 GiB; MODE0 and MODE16 need 1 GiB; the largest volume is 65536 GiB."
  }
  validation {
    condition     = !contains(["io1", "io2"], var.data_volume_type) || var.data_volume_size >= 4
    error_message = "io1 and io2 volumes are at least 4 GiB."
  }
}

variable "data_volume_type" {
  type        = string
  default     = "gp3"
  description = "EBS type of the secrets volume: gp3, gp2, io1 or io2. st1 and sc1 are refused: MODE32 reads 32 random bytes per request (MODE32X 8 times that), which HDD volumes serve at a few hundred IOPS (see README)."

  validation {
    condition     = contains(["gp3", "gp2", "io1", "io2"], var.data_volume_type)
    error_message = "data_volume_type is gp3, gp2, io1 or io2; st1 and sc1 serve random reads far too slowly for MODE32 (see the module README)."
  }
}

variable "data_volume_iops" {
  type        = number
  default     = null
  description = "Provisioned IOPS of the secrets volume: required for io1 and io2; optional for gp3 (null: its baseline 3000). In MODE32 each request that misses the page cache is one random read (MODE32X: eight), so IOPS bound the request rate."

  validation {
    condition     = var.data_volume_iops == null || try(var.data_volume_iops >= 100 && var.data_volume_iops <= 256000, false)
    error_message = "data_volume_iops is null or from 100 to 256000."
  }
  validation {
    condition     = !contains(["io1", "io2"], var.data_volume_type) || var.data_volume_iops != null
    error_message = "io1 and io2 volumes need data_volume_iops."
  }
  validation {
    condition     = var.data_volume_iops == null || contains(["gp3", "io1", "io2"], var.data_volume_type)
    error_message = "data_volume_iops applies to gp3, io1 and io2 only."
  }
}

variable "data_volume_throughput" {
  type        = number
  default     = null
  description = "Throughput of a gp3 secrets volume in MiB/s, 125 to 2000 and at most 0.25 per provisioned IOPS, as AWS allows (null: the baseline 125). Generating MODE32 or MODE32X writes 128 GiB once: about 18 minutes at 125 MiB/s, and every verifying boot reads it back."

  validation {
    condition     = var.data_volume_throughput == null || try(var.data_volume_throughput >= 125 && var.data_volume_throughput <= 2000 && var.data_volume_type == "gp3", false)
    error_message = "data_volume_throughput is null, or 125 to 2000 MiB/s on a gp3 volume."
  }
  validation {
    condition     = var.data_volume_throughput == null || try(var.data_volume_throughput <= 0.25 * coalesce(var.data_volume_iops, 3000), false)
    error_message = "data_volume_throughput is at most 0.25 MiB/s per provisioned IOPS on gp3 (750 MiB/s at the baseline 3000 IOPS): raise data_volume_iops to at least 4 per MiB/s (8000 for 2000 MiB/s)."
  }
}

variable "data_volume_snapshot_id" {
  type        = string
  default     = null
  description = "Snapshot to create the secrets volume from, to restore a backup (see README, Backups): the host then never generates, and serves the volume only if its manifest is there and matches. null: a blank volume, on which the instance generates new secrets."

  validation {
    condition     = var.data_volume_snapshot_id == null || can(regex("^snap-[0-9a-f]{8}([0-9a-f]{9})?$", var.data_volume_snapshot_id))
    error_message = "data_volume_snapshot_id is null or a snapshot id such as snap-0123456789abcdef0."
  }
}

variable "kms_key_arn" {
  type        = string
  default     = null
  description = "ARN of the KMS key encrypting the root volume, the secrets volume and its snapshots. null: the account's default EBS key (aws/ebs). A customer managed key lets its key policy decide who can ever read a snapshot."

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn is null or a KMS key ARN such as arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab."
  }
}

variable "root_volume_size" {
  type        = number
  default     = 8
  description = "Size of the encrypted root volume in GiB (the image needs 8)."

  validation {
    condition     = var.root_volume_size == floor(var.root_volume_size) && var.root_volume_size >= 8 && var.root_volume_size <= 1024
    error_message = "root_volume_size is a whole number of GiB from 8 to 1024."
  }
}

variable "verify_secrets_on_boot" {
  type        = string
  default     = "always"
  description = "always: re-hash every secret against its manifest at every boot before serving (MODE32 and MODE32X read 128 GiB: about 18 minutes at gp3's baseline throughput). after-generate: only after the boot that wrote them."

  validation {
    condition     = contains(["always", "after-generate"], var.verify_secrets_on_boot)
    error_message = "verify_secrets_on_boot is always or after-generate."
  }
}

variable "detailed_monitoring" {
  type        = bool
  default     = true
  description = "CloudWatch metrics every minute instead of every five (a small charge)."
}

variable "egress_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "Networks the instance may open connections to. The service needs none (Amazon DNS and time sync are link-local); a proxy or NAT for OS updates would go here."

  validation {
    condition     = alltrue([for cidr in var.egress_cidr_blocks : can(cidrnetmask(cidr))])
    error_message = "egress_cidr_blocks holds IPv4 CIDR blocks such as 10.0.0.0/16."
  }
}

variable "enable_snapshot_backups" {
  type        = bool
  default     = false
  description = "Snapshot the secrets volume on a schedule with a DLM lifecycle policy. Off by default: every snapshot is a full copy of the secrets, readable by whoever can use the KMS key and create a volume from it (see README, Backups)."
}

variable "secrets_fingerprint" {
  type        = string
  default     = null
  description = "The fingerprint on the host's ready line (`cryptoserver-secrets-setup: ready ... fingerprint=...` on its console) once its first boot completed. Backups start only then: the volume is tagged for the snapshot policy with it, and every snapshot carries it (README, Backups)."

  validation {
    condition     = var.secrets_fingerprint == null || can(regex("^[0-9a-f]{32}$", var.secrets_fingerprint))
    error_message = "secrets_fingerprint is null or the 32 lower-case hex digits of fingerprint= on the host's ready line."
  }
}

variable "snapshot_interval_hours" {
  type        = number
  default     = 24
  description = "Hours between snapshots when enable_snapshot_backups is true."

  validation {
    condition     = contains([1, 2, 3, 4, 6, 8, 12, 24], var.snapshot_interval_hours)
    error_message = "snapshot_interval_hours is 1, 2, 3, 4, 6, 8, 12 or 24 (what DLM supports)."
  }
}

variable "snapshot_time" {
  type        = string
  default     = "03:00"
  description = "UTC time (HH:MM) of the first snapshot of each day when enable_snapshot_backups is true."

  validation {
    condition     = can(regex("^([01][0-9]|2[0-3]):[0-5][0-9]$", var.snapshot_time))
    error_message = "snapshot_time is a UTC time such as 03:00."
  }
}

variable "snapshot_retain_count" {
  type        = number
  default     = 7
  description = "How many snapshots to keep when enable_snapshot_backups is true; older ones are deleted."

  validation {
    condition     = var.snapshot_retain_count == floor(var.snapshot_retain_count) && var.snapshot_retain_count >= 1 && var.snapshot_retain_count <= 1000
    error_message = "snapshot_retain_count is a whole number from 1 to 1000."
  }
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource."

  validation {
    condition     = alltrue([for key, value in var.tags : length(key) <= 128 && length(value) <= 256 && !startswith(lower(key), "aws:") && !startswith(key, "cryptoserver:")])
    error_message = "tags keys are at most 128 characters and values 256; keys starting with aws: are AWS's and cryptoserver: the module's own."
  }
}

variable "alarm_sns_topic_arn" {
  type        = string
  default     = null
  description = "ARN of an SNS topic (standard, not FIFO) the CloudWatch alarms notify when they go off and when they are OK again; null: the alarms exist but notify nobody."

  validation {
    condition     = var.alarm_sns_topic_arn == null || can(regex("^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$", var.alarm_sns_topic_arn))
    error_message = "alarm_sns_topic_arn is null or the ARN of a standard SNS topic (arn:aws:sns:<region>:<account>:<name>)."
  }
}
