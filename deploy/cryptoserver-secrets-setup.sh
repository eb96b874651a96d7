#!/bin/bash
# Prepares cryptoserver's secrets before the server starts (cryptoserver-secrets.service
# runs it at every boot): finds the data volume, gives it a filesystem only when it is
# blank, mounts it, generates the missing secrets, verifies them, and leaves the volume
# mounted read-only. On a complete volume it changes nothing, so it is safe to re-run.
#
# Settings, from the environment (systemd reads /etc/cryptoserver/env, written from user data):
#   CRYPTOSERVER_MODE               MODE0, MODE16, MODE32 or MODE32X (required)
#   CRYPTOSERVER_SECRETDIR          directory of the secrets, the volume's mount point (default /secrets)
#   CRYPTOSERVER_SECRETS_VOLUME_ID  EBS volume holding the secrets (vol-...), found as its NVMe device
#   CRYPTOSERVER_SECRETS_DEVICE     or the block device itself; `none` keeps the secrets in a plain
#                                   directory on whatever filesystem holds it (no mount, no format)
#   CRYPTOSERVER_SECRETS_OWNER      user the server runs as, owner of the secrets (default cryptoserver)
#   CRYPTOSERVER_SECRETS_VERIFY     `always` (default): re-hash every secret at every boot; `after-generate`:
#                                   only after a run that wrote secrets (a MODE32/MODE32X re-hash reads 128 GiB)
#   CRYPTOSERVER_SECRETS_WAIT       seconds to wait for the volume to be attached (default 900)
#   CRYPTOSERVER_SECRETS_TLS_NAME   when set, a DNS name: keep a TLS key and a self-signed certificate
#                                   for it in $CRYPTOSERVER_SECRETDIR/tls (key.pem, cert.pem), made once,
#                                   and print the certificate and its SHA-256 fingerprint at every boot
set -euo pipefail

readonly PROGRAM=cryptoserver-secrets-setup
# ext4 with one inode per MiB: the secrets are 2 MiB files, so the default inode tables
# (one inode per 16 KiB) would waste about 2% of the volume; no blocks reserved for root.
readonly MKFS=(mkfs.ext4 -q -T largefile -m 0 -L cryptosecrets)
readonly MOUNT_OPTIONS=nosuid,nodev,noexec

log() { echo "$PROGRAM: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

mode=${CRYPTOSERVER_MODE:-}
dir=${CRYPTOSERVER_SECRETDIR:-/secrets}
volume_id=${CRYPTOSERVER_SECRETS_VOLUME_ID:-}
device=${CRYPTOSERVER_SECRETS_DEVICE:-}
owner=${CRYPTOSERVER_SECRETS_OWNER:-cryptoserver}
verify_policy=${CRYPTOSERVER_SECRETS_VERIFY:-always}
wait_seconds=${CRYPTOSERVER_SECRETS_WAIT:-900}
tls_name=${CRYPTOSERVER_SECRETS_TLS_NAME:-}

case ${mode^^} in
    MODE0 | MODE16 | MODE32 | MODE32X) ;;
    "") die "CRYPTOSERVER_MODE is not set: set it to MODE0, MODE16, MODE32 or MODE32X in /etc/cryptoserver/env" ;;
    *) die "CRYPTOSERVER_MODE=$mode is not a mode: use MODE0, MODE16, MODE32 or MODE32X" ;;
esac
case $verify_policy in
    always | after-generate) ;;
    *) die "CRYPTOSERVER_SECRETS_VERIFY=$verify_policy: use always or after-generate" ;;
esac
[[ $wait_seconds =~ ^[0-9]+$ ]] || die "CRYPTOSERVER_SECRETS_WAIT=$wait_seconds is not a number of seconds"
[[ $dir == /* ]] || die "CRYPTOSERVER_SECRETDIR=$dir must be an absolute path"
if [[ -n $tls_name && ! $tls_name =~ ^[a-zA-Z0-9][a-zA-Z0-9.-]{0,252}$ ]]; then
    die "CRYPTOSERVER_SECRETS_TLS_NAME=$tls_name is not a DNS name (letters, digits, dots and dashes)"
fi
if [[ -n $volume_id && -n $device ]]; then
    die "set CRYPTOSERVER_SECRETS_VOLUME_ID or CRYPTOSERVER_SECRETS_DEVICE, not both"
fi
if [[ -n $volume_id ]]; then
    [[ $volume_id =~ ^vol-[0-9a-f]{8,17}$ ]] ||
        die "CRYPTOSERVER_SECRETS_VOLUME_ID=$volume_id is not an EBS volume id (vol- and 8 or 17 hex digits)"
    # The NVMe serial of an EBS volume is its id without the dash.
    device=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volume_id/-/}
elif [[ -z $device ]]; then
    die "no secrets volume: set CRYPTOSERVER_SECRETS_VOLUME_ID (EBS) or CRYPTOSERVER_SECRETS_DEVICE" \
        "(a block device, or none for a plain directory) in /etc/cryptoserver/env"
fi

# Waits for the device to appear: Terraform attaches the volume after the instance started.
wait_for_device() {
    local waited=0
    until [[ -b $device ]]; do
        if ((waited >= wait_seconds)); then
            die "$device did not appear within ${wait_seconds}s: is ${volume_id:-the volume} attached to this" \
                "instance? (aws ec2 describe-volumes --volume-ids ${volume_id:-...})"
        fi
        if ((waited % 30 == 0)); then
            log "waiting for $device (${waited}s of ${wait_seconds}s)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# Makes a filesystem only on a blank device: no signature blkid knows (filesystem, RAID
# member, partition table...) and nothing but zeros at its start. Anything else is kept.
format_if_blank() {
    local probe status=0
    probe=$(blkid -p -o export "$real_device") || status=$?
    case $status in
        0)
            log "$real_device already holds a signature ($(grep -E '^(PT)?TYPE=' <<<"$probe" | paste -sd ' ')); not formatting it"
            return
            ;;
        2) ;;
        *) die "blkid cannot probe $real_device (exit $status); not formatting it" ;;
    esac
    if ! cmp --silent --bytes=1048576 "$real_device" /dev/zero; then
        die "$real_device has no filesystem signature but its first MiB is not blank; it is never" \
            "formatted automatically. Inspect it; if its data is really disposable, wipe it by hand" \
            "(blkdiscard or wipefs) and run this again"
    fi
    log "$real_device is blank: making an ext4 filesystem"
    "${MKFS[@]}" "$real_device"
}

# Mounts the device read-write at $dir, or remounts it read-write when a previous run
# left it mounted read-only.
mount_read_write() {
    local source
    source=$(findmnt --noheadings --output SOURCE --mountpoint "$dir" || true)
    if [[ -n $source ]]; then
        [[ $(readlink -f "$source") == "$real_device" ]] ||
            die "$dir is already the mount point of $source, not of $real_device"
        mount -o "remount,rw,$MOUNT_OPTIONS" "$dir"
        return
    fi
    local elsewhere
    elsewhere=$(findmnt --noheadings --output TARGET --source "$real_device" || true)
    [[ -z $elsewhere ]] || die "$real_device is already mounted at $elsewhere; unmount it first"
    format_if_blank
    mkdir -p "$dir"
    mount -o "rw,$MOUNT_OPTIONS" "$real_device" "$dir" ||
        die "cannot mount $real_device at $dir (see the message above); it was not formatted"
}

# Also run on failure: whatever happens after the mount, the volume is not left writable.
remount_read_only() {
    mount -o "remount,ro,$MOUNT_OPTIONS" "$dir"
}

# The host's TLS key lives beside the secrets, on their volume: it never passes through
# user data, and a volume restored from a snapshot keeps it. Made once, in a temporary
# directory renamed into place, so a crash never leaves half a pair. The certificate
# and its fingerprint go to the console at every boot, for clients to pin.
keep_tls_pair() {
    local tls_dir=$dir/tls pending=$dir/.tls.tmp
    if [[ ! -d $tls_dir ]]; then
        rm -rf -- "$pending"
        mkdir -m 0700 -- "$pending"
        log "making a TLS key and a self-signed certificate for $tls_name in $tls_dir"
        local made
        made=$(openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc -days 36500 \
            -subj "/CN=$tls_name" -addext "subjectAltName=DNS:$tls_name" \
            -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
            -addext "extendedKeyUsage=serverAuth" -keyout "$pending/key.pem" -out "$pending/cert.pem" 2>&1) ||
            die "openssl cannot make the TLS key in $pending: $made"
        sync -- "$pending/key.pem" "$pending/cert.pem" "$pending"
        mv -T -- "$pending" "$tls_dir"
        sync -- "$dir"
    fi
    [[ -f $tls_dir/key.pem && -f $tls_dir/cert.pem ]] ||
        die "$tls_dir lacks key.pem or cert.pem; move it aside to make a new pair (clients must then pin the new certificate)"
    chown -R -- "$owner:" "$tls_dir"
    chmod 0500 "$tls_dir"
    chmod 0400 "$tls_dir/key.pem" "$tls_dir/cert.pem"
    local fingerprint
    fingerprint=$(openssl x509 -in "$tls_dir/cert.pem" -noout -fingerprint -sha256) ||
        die "$tls_dir/cert.pem is not a certificate openssl can read"
    log "TLS certificate for $tls_name, SHA-256 fingerprint ${fingerprint#*=}:"
    cat -- "$tls_dir/cert.pem" >&2
}

if [[ $device != none ]]; then
    ((EUID == 0)) || die "mounting $device needs root"
    wait_for_device
    real_device=$(readlink -f "$device")
    mount_read_write
    trap remount_read_only EXIT
fi

# The generator writes its manifest last: present before the run means nothing was missing.
already_complete=false
[[ -f $dir/cryptoserver.manifest ]] && already_complete=true

log "generating the missing $mode secrets in $dir"
cryptoserver-secrets generate --mode "$mode" --dir "$dir" --owner "$owner"
if [[ $verify_policy == always || $already_complete == false ]]; then
    log "verifying every secret in $dir against its manifest"
    cryptoserver-secrets verify --dir "$dir"
else
    log "not re-hashing the secrets (CRYPTOSERVER_SECRETS_VERIFY=$verify_policy; none was written)"
fi

if [[ -n $tls_name ]]; then
    keep_tls_pair
fi

if [[ $device != none ]]; then
    trap - EXIT
    remount_read_only
fi
log "the $mode secrets in $dir are ready${real_device:+ (mounted read-only from $real_device)}"
