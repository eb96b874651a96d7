#!/bin/bash
# Packer's very last step, as root through sudo: it removes the last way in, Packer's
# own. Afterwards no key opens the image and the build user can neither log in nor
# use sudo; Packer only stops the instance and snapshots it. This script deletes
# itself, since Packer can no longer clean up after it.
set -euo pipefail

fail() {
    echo "remove-build-access: error: $*" >&2
    exit 1
}

build_user=${SUDO_USER:?run through sudo by the build user}

# No sudo rights left: cloud-init's grant to the default user, and the sudo group.
rm -f /etc/sudoers.d/90-cloud-init-users
gpasswd --delete "$build_user" sudo >/dev/null 2>&1 || true

# The build user stays (its processes still run) but is locked, expired and has no shell.
usermod --lock --expiredate 1 --shell /usr/sbin/nologin "$build_user"

# Every authorized_keys file on the root filesystem, Packer's temporary key among them.
find / -xdev \( -name authorized_keys -o -name authorized_keys2 \) -type f -print -delete
rm -rf "/home/$build_user/.ssh" /root/.ssh

left=$(find / -xdev \( -name authorized_keys -o -name authorized_keys2 \) -print)
[[ -z $left ]] || fail "authorized keys are still present: $left"
rm -f -- "$0"
echo "remove-build-access: no key and no login user left; the image is sealed" >&2
