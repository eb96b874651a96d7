output "instance_id" {
  description = "ID of the sealed instance (for `cargo xtask audit --instance-id`)."
  value       = aws_instance.this.id
}

output "private_ip" {
  description = "Private IPv4 address of the instance; it has no public one."
  value       = aws_instance.this.private_ip
}

output "ipv6_address" {
  description = "IPv6 address of the instance, or null when allowed_ipv6_cidr_blocks is empty."
  value       = local.ipv6 ? aws_instance.this.ipv6_addresses[0] : null
}

output "endpoint" {
  description = "Base URL of the service: POST /hmac, POST /verify, GET /healthz, GET /readyz."
  value       = "${var.tls ? "https" : "http"}://${aws_instance.this.private_ip}:${var.port}"
}

output "tls_server_name" {
  description = "The DNS name in the host's self-signed certificate (clients verify it with the pinned certificate), or null when tls is false."
  value       = var.tls ? var.name : null
}

output "metrics_endpoint" {
  description = "URL of the Prometheus metrics, or null when metrics_port is null."
  value       = var.metrics_port == null ? null : "http://${aws_instance.this.private_ip}:${var.metrics_port}/metrics"
}

output "security_group_id" {
  description = "ID of the instance's security group: its only ingress is the service port (and metrics_port) from the allowed clients."
  value       = aws_security_group.this.id
}

output "data_volume_id" {
  description = "ID of the encrypted EBS volume holding the secrets (`cargo xtask audit --secrets-volume`). It is never deleted by Terraform."
  value       = aws_ebs_volume.secrets.id
}

output "availability_zone" {
  description = "Availability zone of the instance and its secrets volume."
  value       = aws_ebs_volume.secrets.availability_zone
}

output "snapshot_policy_id" {
  description = "ID of the DLM snapshot policy, or null when enable_snapshot_backups is false."
  value       = var.enable_snapshot_backups ? aws_dlm_lifecycle_policy.secrets[0].id : null
}

output "alarm_arns" {
  description = "ARNs of the CloudWatch alarms on EC2's status checks: system (which also recovers the instance) and instance."
  value = {
    system_check   = aws_cloudwatch_metric_alarm.system_check.arn
    instance_check = aws_cloudwatch_metric_alarm.instance_check.arn
  }
}

output "clients_file" {
  description = "The clients file the user data writes (serial line first), or null without clients: what to sign for a signed update (`terraform output -raw clients_file > F`; docs/operations.md)."
  value       = module.user_data.clients_file
}
