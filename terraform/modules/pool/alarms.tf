# The load balancer's view of the replicas, as CloudWatch alarms that notify
# alarm_sns_topic_arn when it is set (docs/operations.md). A replica counts as
# healthy once its /readyz answers 200, i.e. its secrets passed verification.

locals {
  alarm_notify = var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn]
  target_group_dimensions = {
    LoadBalancer = aws_lb.this.arn_suffix
    TargetGroup  = aws_lb_target_group.this.arn_suffix
  }
}

resource "aws_cloudwatch_metric_alarm" "unhealthy_hosts" {
  alarm_name          = "${var.name}-unhealthy-hosts"
  alarm_description   = "A replica of ${var.name} fails the load balancer's GET /readyz: it cannot read its keys or serve. Runbook: docs/operations.md#cryptoservernotready"
  namespace           = "AWS/NetworkELB"
  metric_name         = "UnHealthyHostCount"
  dimensions          = local.target_group_dimensions
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_notify
  ok_actions          = local.alarm_notify
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "healthy_hosts" {
  alarm_name        = "${var.name}-healthy-hosts"
  alarm_description = "Fewer replicas of ${var.name} pass the load balancer's GET /readyz than the group's desired capacity (${var.desired_capacity}): replicas are missing, failing or still starting. Runbook: docs/operations.md#cloudwatch-alarms-of-the-modules"
  namespace         = "AWS/NetworkELB"
  metric_name       = "HealthyHostCount"
  dimensions        = local.target_group_dimensions
  statistic         = "Minimum"
  period            = 60
  # Longer than a new replica may take to verify its secrets and turn healthy (at
  # least ten minutes, at most the day CloudWatch allows at this period): a routine
  # replacement does not alarm, a replica that never comes does.
  evaluation_periods  = min(1440, max(10, ceil(local.health_check_grace_period / 60) + 5))
  comparison_operator = "LessThanThreshold"
  threshold           = var.desired_capacity
  # No data means no healthy replica reported at all.
  treat_missing_data = "breaching"
  alarm_actions      = local.alarm_notify
  ok_actions         = local.alarm_notify
  tags               = local.tags
}
