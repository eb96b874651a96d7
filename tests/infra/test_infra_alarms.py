"""The CloudWatch alarms of the modules (terraform/alarms.tf, modules/pool/alarms.tf):
the origin recovers itself from a failed system check and reports a failed instance
check; the pool reports unhealthy replicas and missing healthy ones; every alarm
notifies the optional SNS topic. Checked statically, like the rest of the modules
(provider schemas, checkov, trivy and fmt run over these files too)."""

import re

import pytest

from infra_tools import TERRAFORM, blocks, merged, parse_hcl, resources

POOL = TERRAFORM / "modules" / "pool"
NOTIFY = "${local.alarm_notify}"


def alarms(directory):
    return resources(parse_hcl(directory / "alarms.tf"), "aws_cloudwatch_metric_alarm")


def test_the_origin_recovers_from_a_failed_system_check():
    alarm = alarms(TERRAFORM)["system_check"]
    assert (alarm["namespace"], alarm["metric_name"]) == ("AWS/EC2", "StatusCheckFailed_System")
    assert alarm["dimensions"] == {"InstanceId": "${aws_instance.this.id}"}
    assert (alarm["comparison_operator"], alarm["threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    # EC2's recover action: same instance id, private address and attached volumes.
    recover = "arn:${data.aws_partition.current.partition}:automate:${local.region}:ec2:recover"
    assert alarm["alarm_actions"] == f'${{concat(["{recover}"], local.alarm_notify)}}'
    assert alarm["ok_actions"] == NOTIFY
    # The region comes from the instance's own ARN.
    local = parse_hcl(TERRAFORM / "alarms.tf")["locals"][0]
    assert local["region"] == '${split(":", aws_instance.this.arn)[3]}'


def test_the_origin_reports_a_failed_instance_check():
    alarm = alarms(TERRAFORM)["instance_check"]
    assert (alarm["namespace"], alarm["metric_name"]) == ("AWS/EC2", "StatusCheckFailed_Instance")
    assert alarm["dimensions"] == {"InstanceId": "${aws_instance.this.id}"}
    assert (alarm["comparison_operator"], alarm["threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    # Recovery does not help a failed OS: only the operator is told.
    assert alarm["alarm_actions"] == alarm["ok_actions"] == NOTIFY


def test_the_pool_reports_unhealthy_and_missing_replicas():
    pool = alarms(POOL)
    dimensions = {"LoadBalancer": "${aws_lb.this.arn_suffix}", "TargetGroup": "${aws_lb_target_group.this.arn_suffix}"}
    assert parse_hcl(POOL / "alarms.tf")["locals"][0]["target_group_dimensions"] == dimensions
    unhealthy, healthy = pool["unhealthy_hosts"], pool["healthy_hosts"]
    for alarm in (unhealthy, healthy):
        assert alarm["namespace"] == "AWS/NetworkELB"
        assert alarm["dimensions"] == "${local.target_group_dimensions}"
        assert alarm["alarm_actions"] == alarm["ok_actions"] == NOTIFY
    assert (unhealthy["metric_name"], unhealthy["comparison_operator"], unhealthy["threshold"]) == (
        "UnHealthyHostCount", "GreaterThanThreshold", 0)
    assert (healthy["metric_name"], healthy["statistic"], healthy["comparison_operator"], healthy["threshold"]) == (
        "HealthyHostCount", "Minimum", "LessThanThreshold", "${var.desired_capacity}")
    # A target group that reports nothing has no healthy replica.
    assert healthy["treat_missing_data"] == "breaching"
    assert "health_check_grace_period" in healthy["evaluation_periods"]


@pytest.mark.parametrize("directory", [TERRAFORM, POOL], ids=["root", "pool"])
def test_alarms_notify_the_optional_topic_and_are_named_and_tagged(directory):
    module = merged(directory)
    variable = blocks(module, "variable")["alarm_sns_topic_arn"]
    assert variable["default"] is None
    local = parse_hcl(directory / "alarms.tf")["locals"][0]
    assert local["alarm_notify"] == "${var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn]}"
    for name, alarm in alarms(directory).items():
        assert alarm["alarm_name"].startswith("${var.name}-"), name
        assert "docs/operations.md#" in alarm["alarm_description"], name
        assert alarm["tags"] == "${local.tags}", name
        assert alarm["period"] == 60 and alarm["treat_missing_data"] in {"breaching", "notBreaching"}, name
    output = blocks(module, "output")["alarm_arns"]
    assert set(re.findall(r"aws_cloudwatch_metric_alarm\.(\w+)\.arn", str(output["value"]))) == set(alarms(directory))


@pytest.mark.parametrize("directory", [TERRAFORM, POOL], ids=["root", "pool"])
def test_the_topic_arn_is_validated(directory):
    """The validation's regex (RE2's syntax here is Python's too) takes a standard
    topic of any partition and refuses anything else."""
    condition = blocks(merged(directory), "variable")["alarm_sns_topic_arn"]["validation"][0]["condition"]
    pattern = re.search(r'regex\("(.+?)", var\.alarm_sns_topic_arn\)', condition).group(1)
    for good in ["arn:aws:sns:eu-west-1:123456789012:cryptoserver-alerts", "arn:aws-us-gov:sns:us-gov-west-1:123456789012:ops"]:
        assert re.search(pattern, good), good
    for bad in ["arn:aws:sns:eu-west-1:123456789012:alerts.fifo", "arn:aws:sqs:eu-west-1:123456789012:alerts",
                "cryptoserver-alerts", "arn:aws:sns:eu-west-1:1234:alerts"]:
        assert not re.search(pattern, bad), bad
