#!/bin/bash
# Installs an unpacked cryptoserver release (`cargo xtask dist`) on a systemd host: the
# service user, the binaries, the first-boot script and the units, enabled but not
# started. The secrets are made at the next boot, once /etc/cryptoserver/env exists
# (see env.example). Packer's image build runs it; it also serves a host set up by hand.
#
# Usage (as root, from anywhere): install.sh [--root DIR]
#   --root DIR  install into the system tree under DIR instead of / (an image being built, a test)
set -euo pipefail

release=$(dirname "$(readlink -f "$0")")
root=/
if [[ $# -eq 2 && $1 == --root ]]; then
    root=$2
elif [[ $# -ne 0 ]]; then
    echo "usage: $0 [--root DIR]" >&2
    exit 2
fi
if ((EUID != 0)); then
    echo "install.sh: error: run it as root (it creates a system user and installs system units)" >&2
    exit 1
fi

# Commands that change the system act on the tree under --root when one is given.
on_root=()
[[ $root == / ]] || on_root=(--root "$root")

# A system user with no shell, no home and no password: it only runs the server. Its
# UID and GID are fixed: the secrets volume outlives the image, and every image built
# from a release must find its files owned by the same ids.
readonly SERVICE_ID=800
holder() { awk -F: -v id="$SERVICE_ID" '$3 == id { print $1 }' "$root/etc/$1"; }
for database in group passwd; do
    holder=$(holder "$database")
    if [[ -n $holder && $holder != cryptoserver ]]; then
        echo "install.sh: error: id $SERVICE_ID of $root/etc/$database belongs to $holder; the cryptoserver" \
            "user needs it (its secrets volume is owned by it): move $holder to another id" >&2
        exit 1
    fi
done
if ! grep -q '^cryptoserver:' "$root/etc/group"; then
    groupadd "${on_root[@]}" --system --gid "$SERVICE_ID" cryptoserver
fi
if ! grep -q '^cryptoserver:' "$root/etc/passwd"; then
    useradd "${on_root[@]}" --system --uid "$SERVICE_ID" --gid cryptoserver --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin --comment "cryptoserver HMAC service" cryptoserver
elif [[ $(holder passwd) != cryptoserver ]]; then
    # An older install's user keeps its id: the first-boot script gives the secrets to it.
    echo "install.sh: note: the existing cryptoserver user keeps its UID, not $SERVICE_ID" >&2
fi

install -d -m 0755 "$root/usr/local/bin" "$root/usr/local/sbin" "$root/etc/systemd/system"
install -m 0755 "$release/bin/cryptoserver" "$release/bin/cryptoserver-secrets" "$root/usr/local/bin/"
install -m 0755 "$release/cryptoserver-secrets-setup.sh" "$release/cryptoserver-user-data.py" "$root/usr/local/sbin/"
install -m 0644 "$release/systemd/cryptoserver-user-data.service" "$release/systemd/cryptoserver-secrets.service" \
    "$release/systemd/cryptoserver.service" "$root/etc/systemd/system/"
install -d -m 0755 "$root/etc/cryptoserver"
install -m 0644 "$release/env.example" "$root/etc/cryptoserver/env.example"
# The mount point; it stays empty in the image: the secrets are made on the instance.
install -d -m 0755 "$root/secrets"

# Only a running systemd has units to reload: a chroot or a container being built has none.
if [[ $root == / && -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
systemctl "${on_root[@]}" enable cryptoserver-user-data.service cryptoserver-secrets.service cryptoserver.service
echo "installed $("$root/usr/local/bin/cryptoserver" --version) into $root;" \
    "write /etc/cryptoserver/env (see env.example) before the next boot" >&2
