# Every feature of the module: a customer managed KMS key for the volumes and their
# snapshots, daily snapshot backups, a metrics port, IPv4, IPv6 and security-group
# clients, egress to a proxy network, bearer tokens and extra server settings.

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# Whoever may use this key can read the secrets from any snapshot of the volume: keep
# its users to EBS on behalf of this account and the snapshot policy's role.
resource "aws_kms_key" "secrets" {
  description         = "cryptoserver-complete: secrets volume and its snapshots"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersTheKeyThroughIAM"
      Effect    = "Allow"
      Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

module "cryptoserver" {
  source = "../.."

  name          = "cryptoserver-complete"
  ami_id        = var.ami_id
  subnet_id     = var.subnet_id
  instance_type = "c7i.large"
  mode          = "MODE32"
  port          = 8443
  metrics_port  = 9090

  allowed_cidr_blocks        = var.client_cidr_blocks
  allowed_ipv6_cidr_blocks   = var.client_ipv6_cidr_blocks
  allowed_security_group_ids = var.client_security_group_ids
  egress_cidr_blocks         = var.proxy_cidr_blocks

  token_sha256_digests = var.token_sha256_digests
  environment = {
    CRYPTOSERVER_RATE_LIMIT = "200:1000"
    CRYPTOSERVER_MAX_BODY   = "64KiB"
  }

  kms_key_arn            = aws_kms_key.secrets.arn
  data_volume_size       = 160
  data_volume_type       = "gp3"
  data_volume_iops       = 6000
  data_volume_throughput = 500
  verify_secrets_on_boot = "after-generate"

  enable_snapshot_backups = true
  secrets_fingerprint     = var.secrets_fingerprint
  snapshot_interval_hours = 24
  snapshot_time           = "03:00"
  snapshot_retain_count   = 14

  tags = {
    Environment = "example"
  }
}
