variable "region" {
  type        = string
  description = "AWS region of the subnet and the image."
}

variable "ami_id" {
  type        = string
  description = "The image built by packer/cryptoserver.pkr.hcl."
}

variable "subnet_id" {
  type        = string
  description = "Private subnet for the host."
}

variable "secrets_fingerprint" {
  type        = string
  default     = null
  description = "fingerprint= of the host's ready line once its first boot completed: snapshots start then."
}

variable "client_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "IPv4 networks of the applications that call the service."
}

variable "client_ipv6_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "IPv6 networks of the applications that call the service."
}

variable "client_security_group_ids" {
  type        = list(string)
  default     = []
  description = "Security groups of the applications that call the service."
}

variable "proxy_cidr_blocks" {
  type        = list(string)
  default     = []
  description = "Networks of an HTTP proxy the host may reach, for OS updates."
}

variable "token_sha256_digests" {
  type        = list(string)
  default     = []
  description = "SHA-256 digests of the clients' bearer tokens, from `cargo xtask gen-token`."
}
