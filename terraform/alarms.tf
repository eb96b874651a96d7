# AWS's own health signals for a host nobody can log into (docs/operations.md):
# EC2's status checks, as CloudWatch alarms that notify alarm_sns_topic_arn when it
# is set. A failed system check (the hardware or network under the host) also
# recovers the instance onto other hardware: the same instance id, private address
# and attached volumes, so the secrets volume comes back with it. EC2 cannot recover
# an instance with instance storage (hot_copy): that alarm then only notifies.

locals {
  alarm_notify = var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn]
  # The instance's region, from its ARN: arn:<partition>:ec2:<region>:<account>:instance/<id>.
  region = split(":", aws_instance.this.arn)[3]
}

resource "aws_cloudwatch_metric_alarm" "system_check" {
  alarm_name          = "${var.name}-system-check"
  alarm_description   = "EC2's system status check of ${var.name} (${aws_instance.this.id}) failed: AWS recovers the instance onto other hardware, keeping its id, private address and secrets volume. Runbook: docs/operations.md#cloudwatch-alarms-of-the-modules"
  namespace           = "AWS/EC2"
  metric_name         = "StatusCheckFailed_System"
  dimensions          = { InstanceId = aws_instance.this.id }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 2
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  # A stopped instance reports nothing: not a failure.
  treat_missing_data = "notBreaching"
  alarm_actions      = concat(["arn:${data.aws_partition.current.partition}:automate:${local.region}:ec2:recover"], local.alarm_notify)
  ok_actions         = local.alarm_notify
  tags               = local.tags
}

resource "aws_cloudwatch_metric_alarm" "instance_check" {
  alarm_name          = "${var.name}-instance-check"
  alarm_description   = "EC2's instance status check of ${var.name} (${aws_instance.this.id}) failed: its operating system does not answer. Reboot it, then stop and start it. Runbook: docs/operations.md#cloudwatch-alarms-of-the-modules"
  namespace           = "AWS/EC2"
  metric_name         = "StatusCheckFailed_Instance"
  dimensions          = { InstanceId = aws_instance.this.id }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_notify
  ok_actions          = local.alarm_notify
  tags                = local.tags
}
