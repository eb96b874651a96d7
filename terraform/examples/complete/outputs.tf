output "endpoint" {
  description = "Base URL of the service."
  value       = module.cryptoserver.endpoint
}

output "metrics_endpoint" {
  description = "URL of the Prometheus metrics."
  value       = module.cryptoserver.metrics_endpoint
}

output "instance_id" {
  description = "ID of the sealed instance (for cargo xtask audit)."
  value       = module.cryptoserver.instance_id
}

output "data_volume_id" {
  description = "ID of the volume holding the secrets."
  value       = module.cryptoserver.data_volume_id
}

output "snapshot_policy_id" {
  description = "ID of the DLM policy snapshotting the secrets volume."
  value       = module.cryptoserver.snapshot_policy_id
}
