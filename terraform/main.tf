# One sealed cryptoserver host: an instance nobody can log into (no key pair, no SSH,
# no SSM, IMDSv2 only, no public IP, termination protection) and a separate encrypted
# volume on which the instance generates its secrets at first boot. The volume outlives
# the instance: replacing the instance (new image, new settings) keeps the secrets.

data "aws_subnet" "this" {
  id = var.subnet_id
}

data "aws_partition" "current" {}

# A snapshot to restore must be a backup: taken after a first boot completed, which
# its cryptoserver:fingerprint tag says (the snapshot policy's and `cargo xtask
# snapshot`'s carry it). One taken earlier holds no complete secrets.
data "aws_ebs_snapshot" "restored" {
  count = var.data_volume_snapshot_id == null ? 0 : 1

  snapshot_ids = [var.data_volume_snapshot_id]

  lifecycle {
    postcondition {
      condition     = can(regex("^[0-9a-f]{32}$", lookup(self.tags, "cryptoserver:fingerprint", ""))) && (var.secrets_fingerprint == null || lookup(self.tags, "cryptoserver:fingerprint", "") == var.secrets_fingerprint)
      error_message = "Snapshot ${var.data_volume_snapshot_id} has the tag cryptoserver:fingerprint = \"${lookup(self.tags, "cryptoserver:fingerprint", "")}\", but a backup carries the fingerprint of the first boot's ready line${var.secrets_fingerprint == null ? "" : ", ${var.secrets_fingerprint} (secrets_fingerprint)"}: without it the snapshot may predate the ready line, and the host would refuse it. Restore a snapshot taken after it (README, Backups)."
    }
  }
}

locals {
  mode = upper(var.mode)
  tags = merge(var.tags, { "cryptoserver:name" = var.name })

  # IPv6 clients: the instance gets an IPv6 address and the server binds dual-stack
  # ([::] also accepts IPv4, as IPv4-mapped addresses).
  ipv6      = length(var.allowed_ipv6_cidr_blocks) > 0
  bind_host = local.ipv6 ? "[::]" : "0.0.0.0"
  ports     = merge({ service = var.port }, var.metrics_port == null ? {} : { metrics = var.metrics_port })
  # One egress rule for all the allowed networks, or none.
  egress_cidr_blocks = length(var.egress_cidr_blocks) == 0 ? [] : [var.egress_cidr_blocks]

  # /etc/cryptoserver/env, read by both systemd units (the user-data module adds the
  # mode, tokens file, TLS and hot-copy settings). Nothing in it is secret.
  settings = merge(
    var.environment,
    {
      CRYPTOSERVER_BIND              = "${local.bind_host}:${var.port}"
      CRYPTOSERVER_SECRETS_VOLUME_ID = aws_ebs_volume.secrets.id
      CRYPTOSERVER_SECRETS_VERIFY    = var.verify_secrets_on_boot
    },
    var.metrics_port == null ? {} : { CRYPTOSERVER_METRICS_BIND = "${local.bind_host}:${var.metrics_port}" },
    # A volume restored from a snapshot holds secrets already issued: the host never
    # generates on it, and serves it only complete (its manifest written).
    var.data_volume_snapshot_id == null ? {} : { CRYPTOSERVER_SECRETS_RESTORED = "yes" },
  )
}

module "user_data" {
  source = "./modules/user-data"

  mode                 = local.mode
  settings             = local.settings
  token_sha256_digests = var.token_sha256_digests
  clients              = var.clients
  clients_serial       = var.clients_serial
  clients_signer       = var.clients_signer
  tls_server_name      = var.tls ? var.name : null
  hot_copy             = var.hot_copy
  instance_type        = var.instance_type
}

resource "aws_ebs_volume" "secrets" {
  availability_zone = data.aws_subnet.this.availability_zone
  size              = var.data_volume_size
  type              = var.data_volume_type
  iops              = var.data_volume_iops
  throughput        = var.data_volume_throughput
  snapshot_id       = var.data_volume_snapshot_id
  encrypted         = true
  kms_key_id        = var.kms_key_arn

  # The snapshot policy selects the volume by cryptoserver:backup, given only once the
  # operator names the fingerprint of the first boot's ready line: a snapshot taken
  # earlier would hold incomplete secrets. Its snapshots carry both tags.
  tags = merge(local.tags, { Name = "${var.name}-secrets" }, var.secrets_fingerprint == null ? {} : {
    "cryptoserver:backup"      = var.name
    "cryptoserver:fingerprint" = var.secrets_fingerprint
  })

  # The secrets are never rotated: losing this volume breaks every MAC ever made with
  # it. No plan may delete it; see the README for the deliberate way to do so.
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_security_group" "this" {
  name_prefix            = "${var.name}-"
  description            = "cryptoserver ${var.name}: the service port from the named clients, nothing else"
  vpc_id                 = data.aws_subnet.this.vpc_id
  revoke_rules_on_delete = true

  dynamic "ingress" {
    for_each = local.ports
    content {
      description      = "cryptoserver ${ingress.key} port from the allowed clients"
      protocol         = "tcp"
      from_port        = ingress.value
      to_port          = ingress.value
      cidr_blocks      = var.allowed_cidr_blocks
      ipv6_cidr_blocks = var.allowed_ipv6_cidr_blocks
      security_groups  = var.allowed_security_group_ids
    }
  }

  # Given as an attribute, the list is authoritative: an egress rule added outside
  # Terraform is removed at the next apply. Empty by default: the host needs none.
  egress = [for cidr_blocks in(length(var.egress_cidr_blocks) == 0 ? [] : [var.egress_cidr_blocks]) : {
    description      = "connections the operator allowed (egress_cidr_blocks)"
    protocol         = "-1"
    from_port        = 0
    to_port          = 0
    cidr_blocks      = cidr_blocks
    ipv6_cidr_blocks = []
    prefix_list_ids  = []
    security_groups  = []
    self             = false
  }]

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = length(var.allowed_cidr_blocks) + length(var.allowed_ipv6_cidr_blocks) + length(var.allowed_security_group_ids) > 0
      error_message = "No client could reach the service: set allowed_cidr_blocks, allowed_ipv6_cidr_blocks or allowed_security_group_ids."
    }
  }
}

resource "aws_instance" "this" {
  # checkov:skip=CKV2_AWS_41:No instance profile on purpose: the server calls no AWS API, and credentials on a host nobody can log into would only serve an attacker who got in.
  ami                         = var.ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_id
  vpc_security_group_ids      = [aws_security_group.this.id]
  associate_public_ip_address = false
  ipv6_address_count          = local.ipv6 ? 1 : 0
  # Guards against terminating it by hand. force_destroy lets Terraform lift it when a
  # plan replaces or destroys the instance: without it hashicorp/aws 6 stops the host,
  # detaches the secrets, then fails to terminate it.
  disable_api_termination              = true
  force_destroy                        = true
  instance_initiated_shutdown_behavior = "stop"
  ebs_optimized                        = true
  monitoring                           = var.detailed_monitoring
  # cloud-init writes the files once per instance: new settings take a new instance
  # (replace_triggered_by below). A signed update changes a running host's clients, so
  # with a signer a change of the clients alone leaves the instance and its user data
  # as they are; a replacing instance starts with the user data of the day.
  user_data = module.user_data.user_data

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    kms_key_id            = var.kms_key_arn
    delete_on_termination = true
    tags                  = merge(local.tags, { Name = "${var.name}-root" })
  }

  tags = merge(local.tags, {
    Name                  = var.name
    "cryptoserver:sealed" = "true"
  })

  lifecycle {
    ignore_changes       = [user_data]
    replace_triggered_by = [terraform_data.replacement_user_data]

    precondition {
      # null or "" when the subnet has no IPv6 block; both compare safely.
      condition     = !local.ipv6 || (data.aws_subnet.this.ipv6_cidr_block != null && data.aws_subnet.this.ipv6_cidr_block != "")
      error_message = "allowed_ipv6_cidr_blocks is set but subnet ${var.subnet_id} has no IPv6 CIDR block, so the instance could get no IPv6 address: associate one with the subnet (and its VPC), or leave allowed_ipv6_cidr_blocks empty."
    }
  }
}

# Its change (an update of its input) replaces the instance: every change of the user
# data, less the clients file once a signer is set.
resource "terraform_data" "replacement_user_data" {
  input = module.user_data.replacement_user_data
}

# Attached after the instance starts; the first-boot script waits for it. Being a
# separate attachment, it has DeleteOnTermination=false: terminating the instance
# never deletes the secrets.
resource "aws_volume_attachment" "secrets" {
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.secrets.id
  instance_id = aws_instance.this.id
  # Detaching a mounted volume from a running instance can hang or corrupt it.
  stop_instance_before_detaching = true
}

# Optional backups: DLM snapshots the volume tagged cryptoserver:backup = name.
resource "aws_iam_role" "dlm" {
  count = var.enable_snapshot_backups ? 1 : 0

  name_prefix = "${var.name}-dlm-"
  description = "Lets Data Lifecycle Manager snapshot the secrets volume of cryptoserver ${var.name}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "dlm.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "dlm" {
  count = var.enable_snapshot_backups ? 1 : 0

  role       = aws_iam_role.dlm[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
}

# With a customer managed key, snapshotting the volume needs the key too.
resource "aws_iam_role_policy" "dlm_kms" {
  count = var.enable_snapshot_backups && var.kms_key_arn != null ? 1 : 0

  name_prefix = "${var.name}-kms-"
  role        = aws_iam_role.dlm[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"]
      Resource = var.kms_key_arn
    }]
  })
}

check "backups_wait_for_the_first_boot" {
  assert {
    condition     = !var.enable_snapshot_backups || var.secrets_fingerprint != null
    error_message = "enable_snapshot_backups is on, but no snapshot is taken until secrets_fingerprint names the fingerprint on the host's ready line (its console, once the first boot completed): set it and apply again."
  }
}

resource "aws_dlm_lifecycle_policy" "secrets" {
  count = var.enable_snapshot_backups ? 1 : 0

  # DLM allows only letters, digits, spaces, dashes and underscores in these names.
  description        = "cryptoserver ${var.name} secrets volume snapshots"
  execution_role_arn = aws_iam_role.dlm[0].arn
  state              = "ENABLED"

  policy_details {
    resource_types = ["VOLUME"]
    target_tags    = { "cryptoserver:backup" = var.name }

    schedule {
      name      = "every ${var.snapshot_interval_hours} hours keep ${var.snapshot_retain_count}"
      copy_tags = true

      create_rule {
        interval      = var.snapshot_interval_hours
        interval_unit = "HOURS"
        times         = [var.snapshot_time]
      }

      retain_rule {
        count = var.snapshot_retain_count
      }

      tags_to_add = { "cryptoserver:snapshot-of" = "secrets" }
    }
  }

  tags = local.tags
}
