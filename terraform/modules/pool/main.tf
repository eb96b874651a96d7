# A pool of sealed replicas behind an internal Network Load Balancer, all serving the
# secrets of one snapshot (made from the origin host by `cargo xtask snapshot`). Each
# instance is born sealed from the launch template, gets its own encrypted copy of the
# snapshot as its secrets volume (deleted with it: the snapshot is the durable copy),
# verifies every file against the manifest and the expected fingerprint, and only then
# answers /readyz, which the load balancer's health check asks before routing to it.

data "aws_subnet" "this" {
  for_each = toset(var.subnet_ids)

  id = each.value
}

# The image, for its root device's name and to check it can boot this instance type.
data "aws_ami" "this" {
  filter {
    name   = "image-id"
    values = [var.ami_id]
  }
}

# The snapshot, checked at plan against what the replicas will require of it.
data "aws_ebs_snapshot" "secrets" {
  snapshot_ids = [var.secrets_snapshot_id]

  lifecycle {
    postcondition {
      condition     = self.encrypted
      error_message = "Snapshot ${var.secrets_snapshot_id} is not encrypted: the pool only restores encrypted secrets (`cargo xtask snapshot` refuses an unencrypted volume)."
    }
    postcondition {
      # The tags `cargo xtask snapshot` sets catch a wrong snapshot or fingerprint at
      # plan; they guard against no attacker: each replica checks the manifest itself.
      condition     = lookup(self.tags, "cryptoserver:fingerprint", var.expected_fingerprint) == var.expected_fingerprint && upper(lookup(self.tags, "cryptoserver:mode", upper(var.mode))) == upper(var.mode)
      error_message = "Snapshot ${var.secrets_snapshot_id} is tagged with fingerprint ${lookup(self.tags, "cryptoserver:fingerprint", "-")} and mode ${lookup(self.tags, "cryptoserver:mode", "-")}, but expected_fingerprint is ${var.expected_fingerprint} and mode ${upper(var.mode)}: every replica would refuse it. Take both from the snapshot `cargo xtask snapshot` printed."
    }
  }
}

locals {
  mode    = upper(var.mode)
  tags    = merge(var.tags, { "cryptoserver:name" = var.name })
  subnets = [for id in var.subnet_ids : data.aws_subnet.this[id]]
  vpc_id  = local.subnets[0].vpc_id

  # First-boot verification reads every block of the restored volume once, and the
  # first read of each block is fetched from S3 (lazy restore): MODE32 and MODE32X
  # read 128 GiB, which takes over 17 minutes even at gp3's baseline 125 MiB/s and
  # can take far longer from a cold snapshot. An instance replaced for being slow would
  # start again from nothing, so the default errs long: 2 hours (about 18 MiB/s).
  # MODE0 and MODE16 verify in seconds: 10 minutes cover the boot.
  health_check_grace_period = coalesce(var.health_check_grace_period, contains(["MODE32", "MODE32X"], local.mode) ? 7200 : 600)

  # Tags of every instance and secrets volume: what `cargo xtask audit --asg` checks.
  instance_tags = merge(local.tags, {
    Name                       = var.name
    "cryptoserver:mode"        = local.mode
    "cryptoserver:fingerprint" = var.expected_fingerprint
    "cryptoserver:role"        = "replica"
    "cryptoserver:sealed"      = "true"
  })

  # /etc/cryptoserver/env: a replica never generates nor writes its volume; it finds
  # the volume restored from the snapshot by itself (an EBS NVMe disk, not the root,
  # labelled cryptosecrets), so no volume id or device is named here.
  settings = merge(var.environment, {
    CRYPTOSERVER_BIND                         = "0.0.0.0:${var.port}"
    CRYPTOSERVER_SECRETS_ROLE                 = "replica"
    CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT = var.expected_fingerprint
  })
}

module "user_data" {
  source = "../user-data"

  mode                 = local.mode
  settings             = local.settings
  token_sha256_digests = var.token_sha256_digests
  clients              = var.clients
  clients_serial       = var.clients_serial
  clients_signer       = var.clients_signer
  # The TLS pair is the origin's, restored with the secrets: its name is the origin's.
  tls_server_name = var.tls ? var.tls_server_name : null
  hot_copy        = var.hot_copy
  instance_type   = var.instance_type
}

# The load balancer's: clients reach it on the service port only, and it reaches the
# instances' subnets on that port only (traffic and health checks).
resource "aws_security_group" "lb" {
  name_prefix            = "${var.name}-lb-"
  description            = "cryptoserver pool ${var.name} load balancer: the service port from the named clients"
  vpc_id                 = local.vpc_id
  revoke_rules_on_delete = true

  ingress {
    description     = "cryptoserver service port from the allowed clients"
    protocol        = "tcp"
    from_port       = var.port
    to_port         = var.port
    cidr_blocks     = var.allowed_cidr_blocks
    security_groups = var.allowed_security_group_ids
  }

  # To the subnets rather than to the instances' group, which refers to this one: the
  # two groups would otherwise depend on each other.
  egress {
    description = "the replicas' service port: forwarded connections and health checks"
    protocol    = "tcp"
    from_port   = var.port
    to_port     = var.port
    cidr_blocks = [for subnet in local.subnets : subnet.cidr_block]
  }

  tags = merge(local.tags, { Name = "${var.name}-lb" })

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = length(var.allowed_cidr_blocks) + length(var.allowed_security_group_ids) > 0
      error_message = "No client could reach the service: set allowed_cidr_blocks or allowed_security_group_ids."
    }
  }
}

# The instances': only the load balancer reaches them (its group is referred to, which
# holds with client IP preservation too), and they open no connection at all.
resource "aws_security_group" "instances" {
  name_prefix            = "${var.name}-"
  description            = "cryptoserver pool ${var.name} replicas: the service port from the load balancer, nothing else"
  vpc_id                 = local.vpc_id
  revoke_rules_on_delete = true

  ingress {
    description     = "cryptoserver service port from the load balancer (traffic and health checks)"
    protocol        = "tcp"
    from_port       = var.port
    to_port         = var.port
    security_groups = [aws_security_group.lb.id]
  }

  # Given as an attribute, the empty list is authoritative: an egress rule added
  # outside Terraform is removed at the next apply.
  egress = []

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_launch_template" "this" {
  # No key_name, no iam_instance_profile: the image has no login and the server calls
  # no AWS API, so a replica is sealed from its first instruction.
  name_prefix            = "${var.name}-"
  description            = "cryptoserver pool ${var.name}: sealed ${local.mode} replicas of snapshot ${var.secrets_snapshot_id}"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  ebs_optimized          = true
  update_default_version = true
  user_data              = base64encode(module.user_data.user_data)
  # A host that shuts itself down is gone: the group launches a fresh one.
  instance_initiated_shutdown_behavior = "terminate"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = [aws_security_group.instances.id]
  }

  monitoring {
    enabled = var.detailed_monitoring
  }

  block_device_mappings {
    device_name = data.aws_ami.this.root_device_name

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  # The secrets: a new volume from the snapshot at every launch. The replica finds it
  # by what it is (see above), never by this device name.
  block_device_mappings {
    device_name = "/dev/sdf"

    ebs {
      snapshot_id                = var.secrets_snapshot_id
      volume_type                = var.data_volume_type
      iops                       = var.data_volume_iops
      throughput                 = var.data_volume_throughput
      volume_initialization_rate = var.volume_initialization_rate
      encrypted                  = true
      kms_key_id                 = var.kms_key_arn
      delete_on_termination      = true
    }
  }

  dynamic "tag_specifications" {
    for_each = toset(["instance", "volume"])
    content {
      resource_type = tag_specifications.value
      tags          = local.instance_tags
    }
  }

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    precondition {
      condition     = data.aws_ami.this.architecture == "x86_64" && data.aws_ami.this.root_device_type == "ebs"
      error_message = "ami_id ${var.ami_id} is a ${data.aws_ami.this.architecture} image with a root device of type ${data.aws_ami.this.root_device_type}: the pool needs the x86_64 EBS-backed image packer/cryptoserver.pkr.hcl builds."
    }
  }
}

resource "aws_lb" "this" {
  # checkov:skip=CKV_AWS_91:A Network Load Balancer writes access logs for TLS listeners only; this one passes TCP through, so the servers keep terminating TLS.
  # checkov:skip=CKV_AWS_150:The pool holds no state (the snapshot is the durable copy): destroying it must work in one apply, like replacing it.
  name                             = var.name
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.lb.id]
  enable_cross_zone_load_balancing = true
  # IPv4 only: forwarded to the IPv4 targets, an IPv6 client would arrive from the
  # load balancer's own address, shared with every other IPv6 client and with the
  # health checks (one client's connections would get /readyz refused). The
  # schemas of hashicorp/aws 6 have no rule routing by address type (docs/pool.md).
  ip_address_type = "ipv4"

  tags = local.tags

  lifecycle {
    precondition {
      condition     = length(distinct([for subnet in local.subnets : subnet.availability_zone])) == length(var.subnet_ids)
      error_message = "subnet_ids must each be in a different availability zone (a load balancer takes one subnet per zone); they are in ${join(", ", [for subnet in local.subnets : "${subnet.id}: ${subnet.availability_zone}"])}."
    }
    precondition {
      condition     = length(distinct([for subnet in local.subnets : subnet.vpc_id])) == 1
      error_message = "subnet_ids must all be in one VPC; they are in ${join(", ", distinct([for subnet in local.subnets : subnet.vpc_id]))}."
    }
  }
}

resource "aws_lb_target_group" "this" {
  name_prefix = "cs-"
  vpc_id      = local.vpc_id
  target_type = "instance"
  protocol    = "TCP"
  port        = var.port
  # Connections to a replica leaving the pool get this long to finish.
  deregistration_delay = 30

  # /readyz answers 200 once the server can read every key (it needs no token: the
  # load balancer sends no Authorization header), so a replica whose secrets failed
  # verification never gets traffic. HTTPS health checks do not verify the
  # certificate: the self-signed one of the secrets serves.
  health_check {
    enabled             = true
    protocol            = var.tls ? "HTTPS" : "HTTP"
    port                = "traffic-port"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 6
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

# TCP, not TLS: the load balancer passes the TLS connection through, so the replicas
# keep terminating it with the key that never left the secrets.
resource "aws_lb_listener" "this" {
  load_balancer_arn = aws_lb.this.arn
  port              = var.port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "this" {
  name_prefix         = "${var.name}-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  target_group_arns   = [aws_lb_target_group.this.arn]
  # A replica is healthy when the load balancer finds /readyz answering, not merely
  # when EC2 finds it running; the grace period covers first-boot verification.
  health_check_type         = "ELB"
  health_check_grace_period = local.health_check_grace_period
  # A refresh moves on once a new replica passes the load balancer's health check
  # (its verification done) and this minute has passed; unset, it would wait the
  # whole grace period after every replacement.
  default_instance_warmup = 60

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # A new launch template version (new image, snapshot, settings) replaces the
  # instances a few at a time, each new one verified and healthy before the next.
  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = var.instance_refresh_min_healthy_percentage
    }
  }

  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }
}
