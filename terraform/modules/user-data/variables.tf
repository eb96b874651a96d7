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
    condition     = length(setintersection(keys(var.settings), ["CRYPTOSERVER_MODE", "CRYPTOSERVER_TOKENS_FILE", "CRYPTOSERVER_SECRETS_TLS_NAME", "CRYPTOSERVER_TLS_CERT", "CRYPTOSERVER_TLS_KEY", "CRYPTOSERVER_SECRETS_HOT_COPY"])) == 0
    error_message = "settings cannot set what this module writes: pass mode, token_sha256_digests, tls_server_name and hot_copy."
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
