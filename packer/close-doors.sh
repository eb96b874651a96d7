#!/bin/bash
# Packer runs this as root on the build instance, after the install: it closes every
# way into an instance launched from the image except the cryptoserver port. Packer's
# own SSH session keeps working until remove-build-access.sh, the very last step.
set -euo pipefail

log() { echo "close-doors: $*" >&2; }
fail() {
    echo "close-doors: error: $*" >&2
    exit 1
}
installed() { dpkg-query --show --showformat='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# SSH: masked (not only disabled), so that no package update or preset can start it.
# The running daemon serves Packer until the instance stops.
systemctl disable ssh.service ssh.socket 2>/dev/null || true
systemctl mask ssh.service ssh.socket sshd.service
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub

# Remote command channels that do not need SSH, or that feed it keys.
for package in amazon-ssm-agent ec2-instance-connect ec2-instance-connect-config; do
    if installed "$package"; then
        log "removing $package"
        DEBIAN_FRONTEND=noninteractive apt-get purge --yes "$package"
    fi
done
if command -v snap >/dev/null && snap list amazon-ssm-agent >/dev/null 2>&1; then
    snap remove --purge amazon-ssm-agent
fi
systemctl mask amazon-ssm-agent.service snap.amazon-ssm-agent.amazon-ssm-agent.service

# Consoles: the EC2 serial console and any virtual terminal get no login prompt.
systemctl mask serial-getty@.service getty@.service console-getty.service

# cloud-init creates no user and installs no SSH key from the instance metadata.
cat >/etc/cloud/cloud.cfg.d/99-cryptoserver-no-login.cfg <<'EOF'
# cryptoserver: this host has no login of any kind.
users: []
disable_root: true
ssh_pwauth: false
allow_public_ssh_keys: false
ssh_deletekeys: true
ssh_genkeytypes: []
EOF

# cloud-init consumes no user data: no part of it runs (a #cloud-boothook, a script, a
# #part-handler's Python are handled before any module, at every boot) and it writes no
# file. cryptoserver-user-data.service takes the module's two settings files from the
# user data cloud-init stores. cloud-init keeps only the modules that size the root
# filesystem and name the host: bootcmd, runcmd, the scripts-* family, package
# installs, seed_random's command, disk_setup... are off, so changing a stopped
# instance's user data runs nothing as root.
readonly CLOUD_INIT_MODULES=(growpart resizefs set_hostname update_hostname update_etc_hosts)
cat >/etc/cloud/cloud.cfg.d/99-cryptoserver-modules.cfg <<EOF
# cryptoserver: no user data consumed, no cloud-init module that can run code.
allow_userdata: false
cloud_init_modules: [$(IFS=,; echo "${CLOUD_INIT_MODULES[*]}")]
cloud_config_modules: []
cloud_final_modules: []
EOF
# Consumed user data could name modules itself (cloud_final_modules: [scripts_user]),
# outranking that file: so, should any configuration turn it on again, every other
# module leaves the image and cloud-init skips such a name as a module it cannot find.
# dpkg-divert keeps them out across package updates.
modules_dir=$(python3 -c 'import cloudinit.config, os; print(os.path.dirname(cloudinit.config.__file__))')
for module in "$modules_dir"/cc_*.py; do
    name=$(basename "$module" .py)
    [[ " ${CLOUD_INIT_MODULES[*]} " == *" ${name#cc_} "* ]] && continue
    dpkg-divert --quiet --local --rename --divert "$module.cryptoserver-removed" --add "$module"
done

# The boot loader shows no menu and reads no key from the serial console: nobody there
# can edit the kernel command line (init=/bin/sh), pick a recovery entry, open GRUB's
# shell, or stop the boot at the menu. A hidden zero timeout alone is not enough: GRUB
# still polls its input terminals for Escape, which opens the menu and waits forever,
# and the firmware's console can carry the serial port's keys too (SeaBIOS does with no
# display). So GRUB reads only a PC keyboard controller, which an instance does not
# have, and its output stays on the serial port, where EC2's console output reads it.
cat >/etc/default/grub.d/99-cryptoserver.cfg <<'EOF'
# cryptoserver: no boot menu, no recovery entry, no input from the serial console.
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=hidden
GRUB_RECORDFAIL_TIMEOUT=0
GRUB_DISABLE_RECOVERY=true
GRUB_TERMINAL=
GRUB_TERMINAL_INPUT=at_keyboard
GRUB_TERMINAL_OUTPUT="console serial"
EOF
update-grub

# The kernel takes no magic SysRq key from the serial console (a BREAK, then a letter
# that reboots the host or kills every process).
echo 'kernel.sysrq = 0' >/etc/sysctl.d/99-cryptoserver.conf

# No account keeps a password (the build user is locked by remove-build-access.sh).
passwd --lock root >/dev/null

# The image ships no secret and no trace of this build.
if [[ -n $(ls -A /secrets) ]]; then
    fail "/secrets is not empty; the image must not carry secrets"
fi
cloud-init clean --logs
truncate --size=0 /etc/machine-id
journalctl --rotate --vacuum-time=1s >/dev/null 2>&1 || true

# Prove it: each door is shut, or the build fails here.
for unit in ssh.service ssh.socket sshd.service amazon-ssm-agent.service serial-getty@.service getty@.service; do
    [[ $(readlink "/etc/systemd/system/$unit") == /dev/null ]] || fail "$unit is not masked"
done
for package in amazon-ssm-agent ec2-instance-connect; do
    ! installed "$package" || fail "$package is still installed"
done
! command -v amazon-ssm-agent >/dev/null || fail "an amazon-ssm-agent binary is still installed"
command -v openssl >/dev/null || fail "openssl is missing: the first-boot script makes the TLS key with it"
# The ids install.sh gives the service user: the secrets volume, which outlives the
# image, is owned by them (the first-boot script re-applies them to older volumes).
[[ $(id -u cryptoserver):$(id -g cryptoserver) == 800:800 ]] || fail "the cryptoserver user is not UID and GID 800"
for name in bootcmd runcmd scripts_user scripts_per_boot seed_random; do
    ! python3 -c "import cloudinit.config.cc_$name" 2>/dev/null || fail "cloud-init can still run its $name module"
done
python3 -c "import cloudinit.config.cc_growpart" || fail "cloud-init lost its growpart module"
python3 -c 'import yaml' || fail "python3-yaml is missing: cryptoserver-user-data.py reads the user data with it"
# GRUB writes the timeout twice, indented differently (hidden style and its fallback).
timeouts=$(grep -E '^\s*set timeout=' /boot/grub/grub.cfg | tr -d ' \t' | sort -u)
[[ $timeouts == settimeout=0 ]] || fail "/boot/grub/grub.cfg still waits at the boot menu: $timeouts"
! grep -q 'recovery mode' /boot/grub/grub.cfg || fail "/boot/grub/grub.cfg still has a recovery entry"
inputs=$(grep -E '^\s*terminal_input ' /boot/grub/grub.cfg | tr -s ' \t' ' ' | sed 's/^ //' | sort -u)
[[ $inputs == "terminal_input at_keyboard" ]] ||
    fail "/boot/grub/grub.cfg reads keys from another terminal than a PC keyboard: ${inputs:-none}"
for unit in cryptoserver-user-data.service cryptoserver-secrets.service cryptoserver.service; do
    systemctl is-enabled --quiet "$unit" || fail "$unit is not enabled"
done
log "every door is closed but Packer's own session"
