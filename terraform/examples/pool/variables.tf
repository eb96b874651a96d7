variable "region" {
  type        = string
  description = "AWS region of the subnets and the image."
}

variable "ami_id" {
  type        = string
  description = "The image built by packer/cryptoserver.pkr.hcl, for the origin and the replicas."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets in two or more availability zones; the origin goes in the first."
}

variable "client_cidr_blocks" {
  type        = list(string)
  description = "IPv4 networks of the applications that call the service."
}

variable "token_sha256_digests" {
  type        = list(string)
  default     = []
  description = "SHA-256 digests of the clients' bearer tokens, from `cargo xtask gen-token`."
}

variable "secrets_snapshot_id" {
  type        = string
  default     = null
  description = "The snapshot `cargo xtask snapshot` printed; null (the first apply) builds the origin only."
}

variable "expected_fingerprint" {
  type        = string
  default     = null
  description = "Fingerprint of the snapshot's secrets (its cryptoserver:fingerprint tag, the origin's ready line); required with secrets_snapshot_id."

  validation {
    condition     = (var.secrets_snapshot_id == null) == (var.expected_fingerprint == null)
    error_message = "Set secrets_snapshot_id and expected_fingerprint together, both from `cargo xtask snapshot`, or neither (the first apply)."
  }
}
