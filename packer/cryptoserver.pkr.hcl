# The sealed cryptoserver image: Debian 12 with the release of `cargo xtask dist`
# installed and every way in closed (no SSH, no SSM agent, no EC2 Instance Connect,
# no login user, no authorized key). It holds no secret: each instance generates its
# own on its data volume at first boot (deploy/cryptoserver-secrets-setup.sh).
#
#   cargo xtask dist
#   packer init packer
#   packer build -var cryptoserver_version=0.1.0 packer
#
# Then pass the AMI id (also in target/dist/packer-manifest.json) to the Terraform module.

packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type        = string
  default     = env("AWS_REGION")
  description = "AWS region to build the image in (default: the AWS_REGION environment variable)."
  validation {
    condition     = length(var.region) > 0
    error_message = "Set the region: export AWS_REGION, or pass -var region=eu-west-1."
  }
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "x86_64 instance type of the temporary build instance (the image runs on any x86_64 Nitro type)."
}

variable "base_image_name_filter" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "Name filter of the official base image; the most recent match is used. The binaries need a glibc no newer than its own (cargo xtask dist --max-glibc)."
}

variable "base_image_owner" {
  type        = string
  default     = "136693071363"
  description = "AWS account publishing the base image (136693071363: the Debian cloud team)."
}

variable "ssh_username" {
  type        = string
  default     = "admin"
  description = "Login user of the base image, used only during the build and locked at its end (admin on Debian)."
}

variable "ami_name_prefix" {
  type        = string
  default     = "cryptoserver"
  description = "Start of the image name; the version and a timestamp follow."
}

variable "cryptoserver_version" {
  type        = string
  description = "Version of the release to install, as printed by `cargo xtask dist` (the tarball target/dist/cryptoserver-VERSION-x86_64-linux.tar.gz)."
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+", var.cryptoserver_version))
    error_message = "cryptoserver_version is a version such as 0.1.0, as printed by `cargo xtask dist`."
  }
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance (default: the default VPC). It needs a route to the internet for Packer's SSH connection."
}

locals {
  dist_tarball = "${path.root}/../target/dist/cryptoserver-${var.cryptoserver_version}-x86_64-linux.tar.gz"
  timestamp    = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "cryptoserver" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id

  source_ami_filter {
    filters = {
      name                = var.base_image_name_filter
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.base_image_owner]
    most_recent = true
  }

  ami_name        = "${var.ami_name_prefix}-${var.cryptoserver_version}-${local.timestamp}"
  ami_description = "cryptoserver ${var.cryptoserver_version}, sealed (no SSH, no SSM, no login); secrets are made at first boot"
  ena_support     = true
  # Instances launched from the image require IMDSv2, whatever launches them.
  imds_support = "v2.0"

  # The build instance too: IMDSv2 only, no hop beyond the instance.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  # Packer's temporary SSH access is open to this machine's public IP only.
  ssh_username                              = var.ssh_username
  ssh_timeout                               = "10m"
  temporary_security_group_source_public_ip = true

  tags = {
    Name                     = "${var.ami_name_prefix}-${var.cryptoserver_version}"
    "cryptoserver:version"   = var.cryptoserver_version
    "cryptoserver:base-ami"  = "{{ .SourceAMI }}"
    "cryptoserver:base-name" = "{{ .SourceAMIName }}"
  }
  run_tags = {
    Name = "packer-${var.ami_name_prefix}-${var.cryptoserver_version}"
  }
}

build {
  sources = ["source.amazon-ebs.cryptoserver"]

  provisioner "file" {
    source      = local.dist_tarball
    destination = "/tmp/cryptoserver.tar.gz"
  }

  # Once cloud-init has finished its first boot: installs the service user, the binaries
  # and the units (deploy/install.sh).
  provisioner "shell" {
    inline = [
      "sudo cloud-init status --wait > /dev/null || true",
      # The first-boot script makes the host's TLS key with openssl.
      "command -v openssl > /dev/null || { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install --yes -qq openssl; }",
      "release=$(mktemp -d)",
      "tar -xzf /tmp/cryptoserver.tar.gz -C \"$release\" --strip-components=1",
      "sudo \"$release/install.sh\"",
      "rm -rf \"$release\" /tmp/cryptoserver.tar.gz",
    ]
  }

  # Closes every door but Packer's own SSH session.
  provisioner "shell" {
    script          = "${path.root}/close-doors.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  # The very last step: removes Packer's temporary key and locks the build user. Nothing
  # can log in afterwards, Packer included, so the script removes itself (skip_clean).
  provisioner "shell" {
    script          = "${path.root}/remove-build-access.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    skip_clean      = true
  }

  post-processor "manifest" {
    output     = "${path.root}/../target/dist/packer-manifest.json"
    strip_path = true
  }
}
