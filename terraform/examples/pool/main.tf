# From one host to a pool: the origin generates the secrets, `cargo xtask snapshot`
# makes an encrypted snapshot of them, and the pool serves that snapshot from two or
# more zones behind an internal load balancer. Two applies, the snapshot between:
#
#   cd terraform/examples/pool && terraform init
#   terraform apply -var-file=pool.tfvars        # 1. the origin alone (no snapshot yet)
#   # wait for the origin's ready line on its console, then
#   cargo xtask snapshot --instance-id "$(terraform output -raw origin_instance_id)"
#   # 2. the snapshot id it prints, and the fingerprint of its ready line:
#   terraform apply -var-file=pool.tfvars -var secrets_snapshot_id=snap-... -var expected_fingerprint=...

provider "aws" {
  region = var.region
}

locals {
  mode = "MODE32"
}

# The origin: the one host that ever generates these secrets. It may keep serving
# (it is a host like the others) or be removed once the snapshot exists (README).
module "origin" {
  source = "../.."

  name      = "cryptoserver-origin"
  ami_id    = var.ami_id
  subnet_id = var.subnet_ids[0]
  mode      = local.mode

  allowed_cidr_blocks  = var.client_cidr_blocks
  token_sha256_digests = var.token_sha256_digests

  # Generating and verifying 128 GiB: about 4 minutes each at 500 MiB/s.
  data_volume_iops       = 3000
  data_volume_throughput = 500

  tags = {
    Environment = "example"
  }
}

# The replicas, once the snapshot exists.
module "pool" {
  source = "../../modules/pool"
  count  = var.secrets_snapshot_id == null ? 0 : 1

  name                 = "cryptoserver-pool"
  secrets_snapshot_id  = var.secrets_snapshot_id
  expected_fingerprint = var.expected_fingerprint
  mode                 = local.mode
  ami_id               = var.ami_id
  subnet_ids           = var.subnet_ids
  instance_type        = "m7i.large"

  min_size         = 2
  max_size         = 4
  desired_capacity = 3

  allowed_cidr_blocks  = var.client_cidr_blocks
  token_sha256_digests = var.token_sha256_digests
  # The certificate restored with the secrets names the origin.
  tls_server_name = module.origin.tls_server_name

  # Each new replica's volume is loaded from the snapshot at 300 MiB/s (128 GiB in
  # about 7 minutes, charged per GiB) rather than block by block at first read, so
  # its verification is done well within half an hour.
  data_volume_iops           = 3000
  data_volume_throughput     = 500
  volume_initialization_rate = 300
  health_check_grace_period  = 1800

  tags = {
    Environment = "example"
  }
}
