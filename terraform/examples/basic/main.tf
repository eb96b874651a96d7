# A complete call of the module: one sealed MODE32 host in an existing private subnet,
# reachable on port 8080 from the application subnets, with bearer tokens required.
#
#   cargo xtask dist && packer build -var cryptoserver_version=0.1.0 packer
#   cd terraform/examples/basic
#   terraform init
#   terraform apply -var ami_id=ami-... -var subnet_id=subnet-... \
#     -var 'client_cidr_blocks=["10.0.0.0/16"]' -var 'token_sha256_digests=["<from cargo xtask gen-token>"]'

provider "aws" {
  region = var.region
}

module "cryptoserver" {
  source = "../.."

  name      = "cryptoserver-example"
  ami_id    = var.ami_id
  subnet_id = var.subnet_id
  mode      = "MODE32"
  port      = 8080

  allowed_cidr_blocks  = var.client_cidr_blocks
  token_sha256_digests = var.token_sha256_digests
  environment = {
    CRYPTOSERVER_RATE_LIMIT = "200:1000"
  }

  data_volume_size       = 160
  data_volume_throughput = 250 # generates the 128 GiB in about 9 minutes instead of 18

  tags = {
    Environment = "example"
  }
}
