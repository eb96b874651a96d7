variable "mode" {
  type        = string
  description = "The secrets' mode, MODE0, MODE16, MODE32 or MODE32X (written as CRYPTOSERVER_MODE; sizes the hot copy)."

  validation {
    condition     = contains(["MODE0", "MODE16", "MODE32", "MODE32X"], upper(var.mode))
    error_message = "mode is MODE0, MODE16, MODE32 or MODE32X."
  }
}

variable "settings" {
  type        = map(string)
  description = "Further lines of /etc/cryptoserver/env the calling module computed (bind address, secrets settings, the operator's environment); the mode, tokens file, TLS and hot-copy settings are added here."

  validation {
    condition     = alltrue([for key, value in var.settings : can(regex("^(CRYPTOSERVER_[A-Z0-9_]+|RUST_LOG)$", key)) && !strcontains(value, "\n")])
    error_message = "settings keys are CRYPTOSERVER_* settings or RUST_LOG, and values are single lines."
  }
  validation {
    condition     = length(setintersection(keys(var.settings), ["CRYPTOSERVER_MODE", "CRYPTOSERVER_TOKENS_FILE", "CRYPTOSERVER_CLIENTS_FILE", "CRYPTOSERVER_CLIENTS_SIGNER", "CRYPTOSERVER_SECRETS_TLS_NAME", "CRYPTOSERVER_TLS_CERT", "CRYPTOSERVER_TLS_KEY", "CRYPTOSERVER_SECRETS_HOT_COPY"])) == 0
    error_message = "settings cannot set what this module writes: pass mode, token_sha256_digests, clients, clients_signer, tls_server_name and hot_copy."
  }
}

variable "token_sha256_digests" {
  type        = list(string)
  description = "SHA-256 digests (hex) of the clients' bearer tokens, written to the tokens file; empty writes none."

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
  description = "The clients file's serial (its serial=N line): raise it with every change of the clients, above the serial of the last signed document pushed, so that a host's kept document and the user data agree on which is newer."

  validation {
    condition     = var.clients_serial >= 0 && var.clients_serial <= 9223372036854775807 && floor(var.clients_serial) == var.clients_serial
    error_message = "clients_serial is a whole number from 0 to 2^63-1."
  }
}

variable "clients_signer" {
  type        = string
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

variable "tls_server_name" {
  type        = string
  description = "DNS name of the TLS certificate the first-boot script keeps beside the secrets; null serves plain HTTP."

  validation {
    condition     = var.tls_server_name == null || can(regex("^[a-zA-Z0-9][a-zA-Z0-9.-]{0,252}$", var.tls_server_name))
    error_message = "tls_server_name is null or a DNS name (letters, digits, dots and dashes)."
  }
}

variable "hot_copy" {
  type        = bool
  description = "Copy the secrets to the instance-store NVMe disk at boot and serve from there (CRYPTOSERVER_SECRETS_HOT_COPY=instance-store); the instance type must have one large enough."
}

variable "instance_type" {
  type        = string
  description = "The host's instance type, checked for instance storage when hot_copy is true."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9-]+$", var.instance_type))
    error_message = "instance_type is an EC2 instance type such as m7i.large."
  }
}
