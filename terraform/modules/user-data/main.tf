# The user data of a cryptoserver host, shared by the sealed host module and the pool:
# a cloud-config that only writes files, /etc/cryptoserver/env with the settings and,
# with clients, the clients file of their digests (the image's
# cryptoserver-user-data.py writes these two and ignores anything else). Nothing in
# it is secret: anyone allowed to describe the instance reads it.

locals {
  mode        = upper(var.mode)
  tokens_file = "/etc/cryptoserver/tokens"
  # Where deploy/cryptoserver-secrets-setup.sh keeps the TLS pair: beside the secrets.
  tls_dir = "/secrets/tls"

  environment = merge(
    var.settings,
    { CRYPTOSERVER_MODE = local.mode },
    local.clients_file == null ? {} : { CRYPTOSERVER_TOKENS_FILE = local.tokens_file },
    var.clients_signer == null ? {} : { CRYPTOSERVER_CLIENTS_SIGNER = var.clients_signer },
    # The first-boot script makes the TLS key on the secrets volume: no private key
    # ever passes through user data.
    var.tls_server_name == null ? {} : {
      CRYPTOSERVER_SECRETS_TLS_NAME = var.tls_server_name
      CRYPTOSERVER_TLS_CERT         = "${local.tls_dir}/cert.pem"
      CRYPTOSERVER_TLS_KEY          = "${local.tls_dir}/key.pem"
    },
    !var.hot_copy ? {} : { CRYPTOSERVER_SECRETS_HOT_COPY = "instance-store" },
  )

  # One line per token as docs/clients.md writes them: the unnamed digests, then each
  # named client's (its options repeated on its second token's line, as the server
  # requires). The serial line comes first, and only with named clients or a signer,
  # so that a tokens-only configuration renders as before it existed.
  client_lines = flatten([
    for client in var.clients : [
      for digest in client.token_sha256_digests : join(" ", compact([
        digest,
        client.name,
        client.namespace == null ? "" : "namespace=${client.namespace}",
        client.routes == null ? "" : "routes=${join(",", client.routes)}",
        client.rate == null ? "" : "rate=${client.rate.per_second}${client.rate.burst == null ? "" : ":${client.rate.burst}"}",
      ]))
    ]
  ])
  serial_line  = length(var.clients) == 0 && var.clients_signer == null ? [] : ["serial=${var.clients_serial}"]
  client_count = length(var.token_sha256_digests) + length(var.clients)
  clients_file = local.client_count == 0 ? null : join("", [for line in concat(local.serial_line, var.token_sha256_digests, local.client_lines) : "${line}\n"])

  env_file = {
    path        = "/etc/cryptoserver/env"
    owner       = "root:root"
    permissions = "0644"
    content     = join("", [for key in sort(keys(local.environment)) : "${key}=${local.environment[key]}\n"])
  }
  clients_files = local.clients_file == null ? [] : [{
    path        = local.tokens_file
    owner       = "root:cryptoserver"
    permissions = "0640"
    content     = local.clients_file
  }]
  user_data = "#cloud-config\n${yamlencode({ write_files = concat([local.env_file], local.clients_files) })}"
  # What a host is replaced on: all of its user data, except the clients file once a
  # signer is set, whose documents change the clients of a running host.
  replacement_user_data = var.clients_signer == null ? local.user_data : "#cloud-config\n${yamlencode({ write_files = [local.env_file] })}"

  # The hot copy's filesystem: MODE32 and MODE32X need 128 GiB of secrets plus ext4's
  # own (as the secrets volume's 130 GiB minimum), in decimal GB as EC2 sizes its disks;
  # MODE16 2 MiB and MODE0 less: the smallest disk holds them.
  hot_copy_needs_gb = contains(["MODE32", "MODE32X"], local.mode) ? ceil(130 * pow(1024, 3) / pow(1000, 3)) : 1
}

# Read only with hot_copy: whether the instance type has a local NVMe disk that holds
# the copy (the first-boot script copies to one disk).
data "aws_ec2_instance_type" "hot_copy" {
  count = var.hot_copy ? 1 : 0

  instance_type = var.instance_type

  lifecycle {
    postcondition {
      # The data source has no NVMe flag for instance storage, but on the Nitro system
      # (where EBS too is NVMe "required") every instance-store disk is NVMe.
      condition     = self.instance_storage_supported && self.ebs_nvme_support == "required" && max(0, [for disk in self.instance_disks : disk.type == "ssd" ? disk.size : 0]...) >= local.hot_copy_needs_gb
      error_message = "hot_copy needs an instance type with an NVMe instance-store SSD of at least ${local.hot_copy_needs_gb} GB for ${local.mode}; ${var.instance_type} has ${self.instance_storage_supported ? "disks of ${join(", ", [for disk in self.instance_disks : "${disk.count} x ${disk.size} GB ${disk.type}"])}" : "no instance storage"}. Choose a type with local NVMe (the i4i, m6id, c6id and r6id families; for MODE32 and MODE32X i4i.large or an xlarge or larger), or set hot_copy = false."
    }
  }
}
