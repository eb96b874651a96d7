output "endpoint" {
  description = "Base URL of the service through the load balancer: POST /hmac, POST /verify, GET /healthz, GET /readyz. With TLS, clients verify the pinned certificate for tls_server_name, whatever address they connect to."
  value       = "${var.tls ? "https" : "http"}://${aws_lb.this.dns_name}:${var.port}"
}

output "lb_dns_name" {
  description = "DNS name of the internal Network Load Balancer."
  value       = aws_lb.this.dns_name
}

output "lb_arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}

output "target_group_arn" {
  description = "ARN of the target group, whose health check asks each replica's /readyz (aws elbv2 describe-target-health)."
  value       = aws_lb_target_group.this.arn
}

output "tls_server_name" {
  description = "The DNS name in the certificate the replicas serve (the origin's), or null when tls is false."
  value       = var.tls ? var.tls_server_name : null
}

output "autoscaling_group_name" {
  description = "Name of the Auto Scaling group (for `cargo xtask audit --asg`)."
  value       = aws_autoscaling_group.this.name
}

output "launch_template_id" {
  description = "ID of the replicas' launch template."
  value       = aws_launch_template.this.id
}

output "instance_security_group_id" {
  description = "ID of the replicas' security group: only the load balancer reaches them, on the service port; no egress."
  value       = aws_security_group.instances.id
}

output "lb_security_group_id" {
  description = "ID of the load balancer's security group: the service port from the allowed clients."
  value       = aws_security_group.lb.id
}

output "health_check_grace_period" {
  description = "Seconds a new replica has to become ready (the mode's default unless set)."
  value       = local.health_check_grace_period
}

output "alarm_arns" {
  description = "ARNs of the CloudWatch alarms on the target group: unhealthy replicas, and fewer healthy replicas than the desired capacity."
  value = {
    unhealthy_hosts = aws_cloudwatch_metric_alarm.unhealthy_hosts.arn
    healthy_hosts   = aws_cloudwatch_metric_alarm.healthy_hosts.arn
  }
}

output "clients_file" {
  description = "The clients file the user data writes (serial line first), or null without clients: what to sign for a signed update (`terraform output -raw clients_file > F`; docs/operations.md)."
  value       = module.user_data.clients_file
}
