output "endpoint" {
  description = "Base URL of the service."
  value       = module.cryptoserver.endpoint
}

output "instance_id" {
  description = "ID of the sealed instance (for cargo xtask audit)."
  value       = module.cryptoserver.instance_id
}

output "data_volume_id" {
  description = "ID of the volume holding the secrets."
  value       = module.cryptoserver.data_volume_id
}
