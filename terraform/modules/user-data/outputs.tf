output "user_data" {
  description = "The cloud-config text (not base64): write_files only."
  value       = local.user_data
}
