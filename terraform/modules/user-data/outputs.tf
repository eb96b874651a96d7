output "user_data" {
  description = "The cloud-config text (not base64): write_files only."
  value       = local.user_data
}

output "replacement_user_data" {
  description = "The part of user_data whose change must replace a host: all of it, or without the clients file when clients_signer is set (a signed update changes a running host's clients; new hosts start with user_data's)."
  value       = local.replacement_user_data
}

output "clients_file" {
  description = "The clients file's text (serial line first), or null without clients."
  value       = local.clients_file
}
