variable "name" {
  type        = string
  default     = "cryptoserver-pool"
  description = "Name of the pool, used in resource names and tags; the load balancer takes it as is, so it is unique per account and region."

  validation {
    condition     = can(regex("^[a-zA-Z0-9]([a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?$", var.name)) && !startswith(lower(var.name), "internal-")
    error_message = "name is 1 to 32 letters, digits or dashes, neither starting nor ending with a dash nor starting with internal- (what a load balancer's name allows)."
  }
}

variable "secrets_snapshot_id" {
  type        = string
  description = "The snapshot of the origin's secrets volume that `cargo xtask snapshot` printed. Every replica's secrets volume is created from it at launch."

  validation {
    condition     = can(regex("^snap-[0-9a-f]{8}([0-9a-f]{9})?$", var.secrets_snapshot_id))
    error_message = "secrets_snapshot_id is a snapshot id such as snap-0123456789abcdef0, the one `cargo xtask snapshot` prints."
  }
}

variable "expected_fingerprint" {
  type        = string
  description = "Fingerprint of the secrets in the snapshot (32 lower-case hex digits, as `cryptoserver-secrets verify`, /readyz and the snapshot's cryptoserver:fingerprint tag show it). A replica whose restored manifest has another refuses to serve."

  validation {
    condition     = can(regex("^[0-9a-f]{32}$", var.expected_fingerprint))
    error_message = "expected_fingerprint is 32 lower-case hex digits, as the snapshot's cryptoserver:fingerprint tag and `cryptoserver-secrets verify` show it."
  }
}

variable "mode" {
  type        = string
  description = "Mode of the secrets in the snapshot: MODE0, MODE16, MODE32 or MODE32X (the origin's mode; a replica refuses a volume of another mode)."

  validation {
    condition     = contains(["MODE0", "MODE16", "MODE32", "MODE32X"], upper(var.mode))
    error_message = "mode is MODE0, MODE16, MODE32 or MODE32X."
  }
}

variable "ami_id" {
  type        = string
  description = "The cryptoserver image built by packer/cryptoserver.pkr.hcl. A new id is rolled out by instance refresh."

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8}([0-9a-f]{9})?$", var.ami_id))
    error_message = "ami_id is an image id such as ami-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets of the replicas and the load balancer, one per availability zone, two or more zones of one VPC: a zone's outage leaves the others serving."

  validation {
    condition     = length(var.subnet_ids) >= 2 && length(distinct(var.subnet_ids)) == length(var.subnet_ids)
    error_message = "subnet_ids holds two or more distinct subnets, each in another availability zone: one zone is a single point of failure."
  }
  validation {
    condition     = alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8}([0-9a-f]{9})?$", id))])
    error_message = "subnet_ids holds subnet ids such as subnet-0123456789abcdef0."
  }
}

variable "instance_type" {
  type        = string
  default     = "m7i.large"
  description = "x86_64 Nitro instance type of the replicas. Nitro, because a replica finds its secrets volume as an EBS NVMe disk."

  validation {
    condition     = !can(regex("^(t1|t2|m1|m2|m3|m4|c1|c3|c4|r3|r4|i2|d2|x1|x1e|g2|g3|p2|h1)\\.", var.instance_type))
    error_message = "instance_type must be a Nitro type (m7i.large, c7i.large, t3.medium...): on Xen types the secrets volume is no NVMe disk to find it by."
  }
  validation {
    condition     = !can(regex("^[a-z]+[0-9]+g[a-z]*\\.", var.instance_type))
    error_message = "instance_type must be x86_64: the image and its binaries are built for x86_64, not Graviton (arm64)."
  }
}

variable "min_size" {
  type        = number
  default     = 2
  description = "Fewest replicas the group keeps; two or more survive the loss of one host or zone."

  validation {
    condition     = var.min_size == floor(var.min_size) && var.min_size >= 0 && var.min_size <= var.max_size
    error_message = "min_size is a whole number from 0 to max_size."
  }
}

variable "max_size" {
  type        = number
  default     = 4
  description = "Most replicas the group may run (also what an instance refresh may not exceed)."

  validation {
    condition     = var.max_size == floor(var.max_size) && var.max_size >= 1 && var.max_size <= 100
    error_message = "max_size is a whole number from 1 to 100."
  }
}

variable "desired_capacity" {
  type        = number
  default     = 2
  description = "Replicas to run now, from min_size to max_size."

  validation {
    condition     = var.desired_capacity == floor(var.desired_capacity) && var.min_size <= var.desired_capacity && var.desired_capacity <= var.max_size
    error_message = "desired_capacity is a whole number from min_size to max_size."
  }
}

variable "port" {
  type        = number
  default     = 8080
  description = "TCP port of the service on the load balancer and the replicas, the only port open to clients. At least 1024: the server runs without any capability."

  validation {
    condition     = var.port == floor(var.port) && var.port >= 1024 && var.port <= 65535
    error_message = "port is a whole number from 1024 to 65535 (the server has no capability to bind lower ports)."
  }
}

variable "allowed_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "IPv4 networks of the clients allowed to reach the service port of the load balancer."

  validation {
    condition     = alltrue([for cidr in var.allowed_cidr_blocks : can(cidrnetmask(cidr))])
    error_message = "allowed_cidr_blocks holds IPv4 CIDR blocks such as 10.0.0.0/16."
  }
}

variable "allowed_security_group_ids" {
  type        = list(string)
  default     = []
  description = "Security groups of the clients allowed to reach the service port of the load balancer."

  validation {
    condition     = alltrue([for id in var.allowed_security_group_ids : can(regex("^sg-[0-9a-f]{8}([0-9a-f]{9})?$", id))])
    error_message = "allowed_security_group_ids holds security group ids such as sg-0123456789abcdef0."
  }
}

variable "token_sha256_digests" {
  type        = list(string)
  default     = []
  description = "SHA-256 digests (hex) of the bearer tokens clients must send, as printed by `cargo xtask gen-token`. Empty: no token is needed, the security groups are the only gate."

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
  description = "Further server settings (README.md, Configuration), such as CRYPTOSERVER_RATE_LIMIT = \"200:1000\". Never a secret: user data is readable by anyone who can describe the launch template."

  validation {
    condition     = alltrue([for key, value in var.environment : can(regex("^(CRYPTOSERVER_[A-Z_]+|RUST_LOG)$", key)) && !strcontains(value, "\n")])
    error_message = "environment keys are CRYPTOSERVER_* settings or RUST_LOG, and values are single lines."
  }
  validation {
    condition     = alltrue([for key in keys(var.environment) : !startswith(key, "CRYPTOSERVER_SECRETS_") && !startswith(key, "CRYPTOSERVER_TLS_") && !contains(["CRYPTOSERVER_MODE", "CRYPTOSERVER_BIND", "CRYPTOSERVER_SECRETDIR", "CRYPTOSERVER_TOKENS_FILE", "CRYPTOSERVER_CLIENTS_FILE", "CRYPTOSERVER_CLIENTS_SIGNER", "CRYPTOSERVER_METRICS_BIND"], key)])
    error_message = "environment cannot set what the pool manages (the mode, bind address, tokens, TLS and every CRYPTOSERVER_SECRETS_* setting: a replica's role, fingerprint and volume come from the module's inputs); the pool serves no metrics port."
  }
}

variable "tls" {
  type        = bool
  default     = true
  description = "Serve HTTPS with the TLS pair the origin made beside its secrets (restored with them from the snapshot; set it as the origin was). The load balancer passes TLS through and health-checks over HTTPS. false: plain HTTP, bearer tokens in clear."
}

variable "tls_server_name" {
  type        = string
  default     = "cryptoserver"
  description = "The DNS name in the origin's certificate: the origin module's name (its tls_server_name output). Clients verify it with the pinned certificate, whatever address they connect to."

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9-]{0,31}$", var.tls_server_name))
    error_message = "tls_server_name is the origin module's name: 1 to 32 letters, digits or dashes, starting with a letter or digit."
  }
}

variable "hot_copy" {
  type        = bool
  default     = false
  description = "Copy the secrets at boot to the instance's local NVMe disk (instance store), verifying them while copying, and serve from there; the restored EBS volume stays mounted read-only. The instance type needs an NVMe instance-store SSD that holds the mode's secrets (MODE32 and MODE32X: 140 GB; checked at plan). One more copy on the host, encrypted by the Nitro system with a key that dies with the instance (README, Hot copy)."
}

variable "health_check_grace_period" {
  type        = number
  default     = null
  description = "Seconds a new replica has to pass the load balancer's health check before the group replaces it: first-boot verification reads every secret from a lazily restored volume. null: 7200 for MODE32 and MODE32X (128 GiB at about 18 MiB/s), 600 for MODE0 and MODE16 (README, Sizing the grace period)."

  validation {
    condition     = var.health_check_grace_period == null || try(var.health_check_grace_period == floor(var.health_check_grace_period) && var.health_check_grace_period >= 300 && var.health_check_grace_period <= 86400, false)
    error_message = "health_check_grace_period is null or a whole number of seconds from 300 (a boot) to 86400 (a day)."
  }
}

variable "instance_refresh_min_healthy_percentage" {
  type        = number
  default     = 100
  description = "Share of the desired replicas an instance refresh keeps in service while it replaces the others, as AWS counts it: without a max_healthy_percentage above 100 the group cannot launch first, so 100 (the default) replaces one replica at a time by terminating it before its successor launches, and the pool serves one replica short until that one is healthy (its whole first-boot verification for MODE32). Run three or more replicas (README, Instance refresh)."

  validation {
    condition     = var.instance_refresh_min_healthy_percentage == floor(var.instance_refresh_min_healthy_percentage) && var.instance_refresh_min_healthy_percentage >= 0 && var.instance_refresh_min_healthy_percentage <= 100
    error_message = "instance_refresh_min_healthy_percentage is a whole number from 0 to 100."
  }
}

variable "data_volume_type" {
  type        = string
  default     = "gp3"
  description = "EBS type of each replica's secrets volume: gp3, gp2, io1 or io2. st1 and sc1 are refused: MODE32 reads 32 random bytes per request, which HDD volumes serve at a few hundred IOPS."

  validation {
    condition     = contains(["gp3", "gp2", "io1", "io2"], var.data_volume_type)
    error_message = "data_volume_type is gp3, gp2, io1 or io2; st1 and sc1 serve random reads far too slowly for MODE32 (see the module README)."
  }
}

variable "data_volume_iops" {
  type        = number
  default     = null
  description = "Provisioned IOPS of each secrets volume: required for io1 and io2; optional for gp3 (null: its baseline 3000). In MODE32 each request that misses the page cache is one random read (MODE32X: eight)."

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
  description = "Throughput of a gp3 secrets volume in MiB/s, 125 to 2000 and at most 0.25 per provisioned IOPS (null: the baseline 125). Verifying MODE32 reads 128 GiB at every launch: about 18 minutes at 125 MiB/s once the blocks are loaded."

  validation {
    condition     = var.data_volume_throughput == null || try(var.data_volume_throughput >= 125 && var.data_volume_throughput <= 2000 && var.data_volume_type == "gp3", false)
    error_message = "data_volume_throughput is null, or 125 to 2000 MiB/s on a gp3 volume."
  }
  validation {
    condition     = var.data_volume_throughput == null || try(var.data_volume_throughput <= 0.25 * coalesce(var.data_volume_iops, 3000), false)
    error_message = "data_volume_throughput is at most 0.25 MiB/s per provisioned IOPS on gp3 (750 MiB/s at the baseline 3000 IOPS): raise data_volume_iops to at least 4 per MiB/s (8000 for 2000 MiB/s)."
  }
}

variable "volume_initialization_rate" {
  type        = number
  default     = null
  description = "EBS provisioned rate for volume initialization in MiB/s (100 to 300): each secrets volume is loaded from the snapshot at this rate, a predictable time for a charge per GiB, instead of block by block at first read. null: lazy loading, free but slow (README, Sizing the grace period)."

  validation {
    condition     = var.volume_initialization_rate == null || try(var.volume_initialization_rate == floor(var.volume_initialization_rate) && var.volume_initialization_rate >= 100 && var.volume_initialization_rate <= 300, false)
    error_message = "volume_initialization_rate is null or a whole number of MiB/s from 100 to 300."
  }
}

variable "kms_key_arn" {
  type        = string
  default     = null
  description = "ARN of the KMS key encrypting each replica's root and secrets volumes. null: the account's default EBS key (aws/ebs). The snapshot's own key must be usable too."

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn is null or a KMS key ARN such as arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab."
  }
}

variable "root_volume_size" {
  type        = number
  default     = 8
  description = "Size of each replica's encrypted root volume in GiB (the image needs 8)."

  validation {
    condition     = var.root_volume_size == floor(var.root_volume_size) && var.root_volume_size >= 8 && var.root_volume_size <= 1024
    error_message = "root_volume_size is a whole number of GiB from 8 to 1024."
  }
}

variable "detailed_monitoring" {
  type        = bool
  default     = true
  description = "CloudWatch metrics every minute instead of every five (a small charge)."
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
