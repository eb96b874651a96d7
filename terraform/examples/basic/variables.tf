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

variable "client_cidr_blocks" {
  type        = list(string)
  description = "Networks of the applications that call the service."
}

variable "token_sha256_digests" {
  type        = list(string)
  default     = []
  description = "SHA-256 digests of the clients' bearer tokens, from `cargo xtask gen-token`."
}
