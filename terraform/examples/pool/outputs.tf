output "origin_instance_id" {
  description = "ID of the origin host, for `cargo xtask snapshot --instance-id` and `cargo xtask audit`."
  value       = module.origin.instance_id
}

output "origin_endpoint" {
  description = "Base URL of the origin host."
  value       = module.origin.endpoint
}

output "endpoint" {
  description = "Base URL of the pool, through its internal load balancer; null before the second apply."
  value       = one(module.pool[*].endpoint)
}

output "tls_server_name" {
  description = "The DNS name clients verify in the pinned certificate, at the origin and the pool alike."
  value       = module.origin.tls_server_name
}

output "autoscaling_group_name" {
  description = "The pool's Auto Scaling group, for `cargo xtask audit --asg`; null before the second apply."
  value       = one(module.pool[*].autoscaling_group_name)
}
