#!/bin/bash
# Prepares cryptoserver's secrets before the server starts (cryptoserver-secrets.service
# runs it at every boot). Origin role (the default): finds the data volume, gives it a
# filesystem only when it is blank, mounts it, generates the missing secrets, verifies
# them, and leaves the volume mounted read-only; on a complete volume it changes nothing,
# so it is safe to re-run. Replica role (a pool's host, its volume restored from the
# origin's snapshot): mounts the volume read-only and never writes to it, checks the
# manifest's fingerprint, and verifies every file. Either role can then copy the
# secrets to local NVMe instance storage while verifying them (the hot copy) and have
# the server read that copy. On success the last line is the ready line, for
# `cargo xtask snapshot` and operators (docs/pool.md):
#   cryptoserver-secrets-setup: ready role=R mode=M fingerprint=F verified=V mount=ro|none volume=vol-…|- hot-copy=none|DIR
# On any failure it prints `cryptoserver-secrets-setup: error: ...`, exits non-zero, and
# the server (Requires= this unit) does not start.
#
# Settings, from the environment (systemd reads /etc/cryptoserver/env, written from user data):
#   CRYPTOSERVER_MODE               MODE0, MODE16, MODE32 or MODE32X (required)
#   CRYPTOSERVER_SECRETDIR          directory of the secrets, the volume's mount point (default /secrets)
#   CRYPTOSERVER_SECRETS_ROLE       `origin` (default): format if blank, generate, verify; `replica`:
#                                   never generates, formats or writes; mounts the volume read-only
#   CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT
#                                   the manifest's fingerprint (32 hex digits) the secrets must have:
#                                   required in the replica role. In the origin role it means the
#                                   secrets exist already: the origin then never generates or writes
#   CRYPTOSERVER_SECRETS_RESTORED   `yes`: the volume was restored from a snapshot (the module sets it
#                                   with data_volume_snapshot_id); the origin never generates or writes,
#                                   and serves it only with a manifest (default no)
#   CRYPTOSERVER_SECRETS_VOLUME_ID  EBS volume holding the secrets (vol-...), found as its NVMe device
#   CRYPTOSERVER_SECRETS_DEVICE     or the block device itself; `none` keeps the secrets in a plain
#                                   directory on whatever filesystem holds it (no mount, no format).
#                                   A replica with neither finds its volume: the one EBS NVMe device
#                                   (by its controller's model) other than the root disk whose ext4
#                                   filesystem is labelled cryptosecrets
#   CRYPTOSERVER_SECRETS_OWNER      user the server runs as, owner of the secrets (default cryptoserver);
#                                   a replica refuses files not owned by it (it cannot chown read-only)
#   CRYPTOSERVER_SECRETS_VERIFY     `always` (default): re-hash every secret at every boot; `after-generate`:
#                                   only after a run that wrote secrets (a MODE32/MODE32X re-hash reads 128 GiB).
#                                   A replica and a hot copy always verify every file
#   CRYPTOSERVER_SECRETS_WAIT       seconds to wait for the volume to be attached (default 900)
#   CRYPTOSERVER_SECRETS_TLS_NAME   when set, a DNS name: keep a TLS key and a self-signed certificate
#                                   for it in $CRYPTOSERVER_SECRETDIR/tls (key.pem, cert.pem), made once
#                                   by the origin (a replica requires the restored pair), and print the
#                                   certificate and its SHA-256 fingerprint at every boot
#   CRYPTOSERVER_SECRETS_HOT_COPY   `off` (default) or `instance-store`: once the volume is ready, make a
#                                   fresh filesystem on the NVMe instance-store device (found by its
#                                   controller's model, never by name; an EBS device is never formatted),
#                                   copy every secret there while verifying it (this is the boot's
#                                   verification), mount it read-only and have the server read it. No
#                                   such device, one too small, or a mismatch: error, the server does
#                                   not start (it never falls back to the EBS volume)
#   CRYPTOSERVER_SECRETS_HOT_DIR    mount point of the hot copy (default /secrets-hot)
# For the tests only (never set on a host):
#   CRYPTOSERVER_SECRETS_SYSFS        where devices are looked up by model (default /sys): a tree of
#                                     block/NAME/device/{model,serial} naming devices /dev/NAME
#   CRYPTOSERVER_SECRETS_RUNTIME_ENV  the file pointing the server at the hot copy
#                                     (default /run/cryptoserver/secrets.env, which cryptoserver.service reads)
# For the image built for virtual machines only (packer/qemu-devices.conf, docs/image.md):
#   CRYPTOSERVER_SECRETS_EBS_MODEL, CRYPTOSERVER_SECRETS_INSTANCE_STORE_MODEL
#                                     the controller models standing for EBS and instance storage
set -euo pipefail

readonly PROGRAM=cryptoserver-secrets-setup
# ext4 with one inode per MiB: the secrets are 2 MiB files, so the default inode tables
# (one inode per 16 KiB) would waste about 2% of the volume; no blocks reserved for root.
# Its label is how a replica finds the volume restored from the origin's snapshot.
readonly LABEL=cryptosecrets
readonly MKFS=(mkfs.ext4 -q -T largefile -m 0 -L "$LABEL")
# The hot copy is made anew at every boot: no journal (a crash loses nothing the next
# boot does not rebuild), and -F because the device holds the last boot's copy.
readonly MKFS_HOT=(mkfs.ext4 -q -F -T largefile -m 0 -O ^has_journal -L cryptohot)
readonly MOUNT_OPTIONS=nosuid,nodev,noexec
# Files read at once when verifying or copying: an EBS read takes about a millisecond
# (far more for a block not yet loaded from the snapshot), so reads in flight, not
# cores, set the pace; each costs a 1 MiB buffer.
readonly READ_JOBS=16
readonly MANIFEST=cryptoserver.manifest
# What the NVMe controller of each kind of AWS disk calls itself (sysfs .../device/model).
# Only the image built for virtual machines names QEMU's instead (packer/qemu-devices.conf).
readonly EBS_MODEL=${CRYPTOSERVER_SECRETS_EBS_MODEL:-Amazon Elastic Block Store}
readonly INSTANCE_STORE_MODEL=${CRYPTOSERVER_SECRETS_INSTANCE_STORE_MODEL:-Amazon EC2 NVMe Instance Storage}

log() { echo "$PROGRAM: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

mode=${CRYPTOSERVER_MODE:-}
mode=${mode^^}
dir=${CRYPTOSERVER_SECRETDIR:-/secrets}
role=${CRYPTOSERVER_SECRETS_ROLE:-origin}
expected=${CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT:-}
expected=${expected,,}
restored=${CRYPTOSERVER_SECRETS_RESTORED:-no}
volume_id=${CRYPTOSERVER_SECRETS_VOLUME_ID:-}
device=${CRYPTOSERVER_SECRETS_DEVICE:-}
owner=${CRYPTOSERVER_SECRETS_OWNER:-cryptoserver}
verify_policy=${CRYPTOSERVER_SECRETS_VERIFY:-always}
wait_seconds=${CRYPTOSERVER_SECRETS_WAIT:-900}
tls_name=${CRYPTOSERVER_SECRETS_TLS_NAME:-}
hot_copy=${CRYPTOSERVER_SECRETS_HOT_COPY:-off}
hot_dir=${CRYPTOSERVER_SECRETS_HOT_DIR:-/secrets-hot}
sysfs=${CRYPTOSERVER_SECRETS_SYSFS:-/sys}
runtime_env=${CRYPTOSERVER_SECRETS_RUNTIME_ENV:-/run/cryptoserver/secrets.env}

case $mode in
    MODE0 | MODE16 | MODE32 | MODE32X) ;;
    "") die "CRYPTOSERVER_MODE is not set: set it to MODE0, MODE16, MODE32 or MODE32X in /etc/cryptoserver/env" ;;
    *) die "CRYPTOSERVER_MODE=${CRYPTOSERVER_MODE} is not a mode: use MODE0, MODE16, MODE32 or MODE32X" ;;
esac
case $role in
    origin | replica) ;;
    *) die "CRYPTOSERVER_SECRETS_ROLE=$role: use origin (generates the secrets) or replica (serves a restored copy)" ;;
esac
case $restored in
    yes | no) ;;
    *) die "CRYPTOSERVER_SECRETS_RESTORED=$restored: use yes (a volume restored from a snapshot) or no" ;;
esac
case $verify_policy in
    always | after-generate) ;;
    *) die "CRYPTOSERVER_SECRETS_VERIFY=$verify_policy: use always or after-generate" ;;
esac
case $hot_copy in
    off | instance-store) ;;
    *) die "CRYPTOSERVER_SECRETS_HOT_COPY=$hot_copy: use off or instance-store" ;;
esac
[[ $wait_seconds =~ ^[0-9]+$ ]] || die "CRYPTOSERVER_SECRETS_WAIT=$wait_seconds is not a number of seconds"
[[ $dir == /* ]] || die "CRYPTOSERVER_SECRETDIR=$dir must be an absolute path"
[[ $hot_dir == /* && $hot_dir != "$dir" ]] ||
    die "CRYPTOSERVER_SECRETS_HOT_DIR=$hot_dir must be an absolute path other than CRYPTOSERVER_SECRETDIR"
if [[ -n $tls_name && ! $tls_name =~ ^[a-zA-Z0-9][a-zA-Z0-9.-]{0,252}$ ]]; then
    die "CRYPTOSERVER_SECRETS_TLS_NAME=$tls_name is not a DNS name (letters, digits, dots and dashes)"
fi
if [[ -n $expected && ! $expected =~ ^[0-9a-f]{32}$ ]]; then
    die "CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT=$expected is not a secrets fingerprint (32 hex digits," \
        "as \`cryptoserver-secrets verify\` and /readyz show it)"
fi
if [[ $role == replica && -z $expected ]]; then
    die "CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT is not set: a replica serves only the secrets it was" \
        "told to expect (the fingerprint on the origin's ready line and its snapshot's tags)"
fi
if [[ -n $volume_id && -n $device ]]; then
    die "set CRYPTOSERVER_SECRETS_VOLUME_ID or CRYPTOSERVER_SECRETS_DEVICE, not both"
fi
# Only an origin given neither a restored volume nor an expected fingerprint makes
# secrets. Any other host serves a set that existed before, which new keys would
# silently change (every MAC issued under them would then fail): it mounts the volume
# read-only, writes nothing, and refuses a set without its manifest.
generates=false
kept_because=
[[ -z $expected ]] || kept_because="CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT is set"
[[ $restored == no ]] || kept_because+="${kept_because:+, }CRYPTOSERVER_SECRETS_RESTORED=yes"
if [[ $role == origin && -z $kept_because ]]; then
    generates=true
fi
if [[ -n $volume_id ]]; then
    [[ $volume_id =~ ^vol-[0-9a-f]{8,17}$ ]] ||
        die "CRYPTOSERVER_SECRETS_VOLUME_ID=$volume_id is not an EBS volume id (vol- and 8 or 17 hex digits)"
    # udev names an NVMe disk by its model and serial; an EBS volume's serial is its id without the dash.
    device=/dev/disk/by-id/nvme-${EBS_MODEL// /_}_${volume_id/-/}
elif [[ -z $device && $role == origin ]]; then
    die "no secrets volume: set CRYPTOSERVER_SECRETS_VOLUME_ID (EBS) or CRYPTOSERVER_SECRETS_DEVICE" \
        "(a block device, or none for a plain directory) in /etc/cryptoserver/env"
fi

# A stale pointer to a hot copy must not outlive a failed run: the server reads the EBS
# volume unless this run finishes a hot copy.
if [[ -e $runtime_env ]]; then
    rm -f -- "$runtime_env"
fi

# The model of block device NAME's controller as sysfs reports it, spaces trimmed;
# empty for devices without one (loop devices, partitions).
device_model() {
    local model=
    if [[ -r $sysfs/block/$1/device/model ]]; then
        read -r model <"$sysfs/block/$1/device/model" || true
    fi
    echo "$model"
}

# Names of the block devices whose controller reports model $1.
devices_by_model() {
    local entry name
    for entry in "$sysfs"/block/*; do
        name=${entry##*/}
        if [[ $(device_model "$name") == "$1" ]]; then
            echo "$name"
        fi
    done
}

# Every block device with a model, as `NAME (model), ...`, for error messages.
known_devices() {
    local entry name model listed=
    for entry in "$sysfs"/block/*; do
        name=${entry##*/}
        model=$(device_model "$name")
        [[ -z $model ]] || listed+="${listed:+, }$name ($model)"
    done
    echo "${listed:-none}"
}

# The EBS volume id of block device $1 from its NVMe serial (the id without its dash), or -.
volume_of() {
    local serial=
    if [[ -r $sysfs/block/${1##*/}/device/serial ]]; then
        read -r serial <"$sysfs/block/${1##*/}/device/serial" || true
    fi
    if [[ $serial =~ ^vol([0-9a-f]{8,17})$ ]]; then
        echo "vol-${BASH_REMATCH[1]}"
    else
        echo -
    fi
}

# Whether device $1, or a partition of it, is mounted at $2 (or anywhere without $2).
mounted_at() {
    local mountpoints
    mountpoints=$(lsblk --noheadings --raw --output MOUNTPOINT "$1" 2>/dev/null) || return 1
    if [[ -n ${2:-} ]]; then
        grep -qxF -- "$2" <<<"$mountpoints"
    else
        grep -q . <<<"$mountpoints"
    fi
}

# A replica's volume restored from the snapshot: the EBS device, other than the root
# disk, that carries the origin's filesystem label. Never chosen by device name.
find_restored_volume() {
    local name candidates=()
    while read -r name; do
        [[ -n $name && -b /dev/$name ]] || continue
        if mounted_at "/dev/$name" /; then
            continue
        fi
        if blkid -p -o export "/dev/$name" 2>/dev/null | grep -qx "LABEL=$LABEL"; then
            candidates+=("/dev/$name")
        fi
    done < <(devices_by_model "$EBS_MODEL")
    printf '%s\n' "${candidates[@]}"
}

# Waits for the device to appear: Terraform attaches the volume after the instance
# started; a replica's volume is there at launch but may take a moment to show.
wait_for_device() {
    local waited=0 found
    while true; do
        if [[ -z $device ]]; then
            found=$(find_restored_volume)
            if (($(grep -c . <<<"$found") > 1)); then
                die "more than one EBS volume carries the label $LABEL: $(paste -sd ' ' <<<"$found");" \
                    "set CRYPTOSERVER_SECRETS_VOLUME_ID to the one restored from the secrets snapshot"
            fi
            if [[ -n $found ]]; then
                device=$found
                log "found the secrets volume restored from the snapshot: $device"
                return
            fi
        elif [[ -b $device ]]; then
            return
        fi
        if ((waited >= wait_seconds)); then
            if [[ -z $device ]]; then
                die "no EBS volume labelled $LABEL appeared within ${wait_seconds}s (block devices with a" \
                    "model: $(known_devices)): does the launch template map a volume from the secrets" \
                    "snapshot? Or set CRYPTOSERVER_SECRETS_VOLUME_ID"
            fi
            die "$device did not appear within ${wait_seconds}s: is ${volume_id:-the volume} attached to this" \
                "instance? (aws ec2 describe-volumes --volume-ids ${volume_id:-...})"
        fi
        if ((waited % 30 == 0)); then
            log "waiting for ${device:-the EBS volume labelled $LABEL} (${waited}s of ${wait_seconds}s)"
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

# Whether a previous run left the device mounted at $dir; refuses another device there,
# or ours mounted elsewhere.
already_mounted() {
    local source elsewhere
    source=$(findmnt --noheadings --output SOURCE --mountpoint "$dir" || true)
    if [[ -n $source ]]; then
        [[ $(readlink -f "$source") == "$real_device" ]] ||
            die "$dir is already the mount point of $source, not of $real_device"
        return 0
    fi
    elsewhere=$(findmnt --noheadings --output TARGET --source "$real_device" || true)
    [[ -z $elsewhere ]] || die "$real_device is already mounted at $elsewhere; unmount it first"
    return 1
}

# Mounts the device read-write at $dir, or remounts it read-write when a previous run
# left it mounted read-only.
mount_read_write() {
    if already_mounted; then
        mount -o "remount,rw,$MOUNT_OPTIONS" "$dir"
        return
    fi
    format_if_blank
    mkdir -p "$dir"
    mount -o "rw,$MOUNT_OPTIONS" "$real_device" "$dir" ||
        die "cannot mount $real_device at $dir (see the message above); it was not formatted"
}

# A replica's only mount: the block device itself is made read-only first, so not even
# the kernel (a journal replay) can write to it.
mount_read_only() {
    if already_mounted; then
        findmnt --noheadings --output OPTIONS --mountpoint "$dir" | tr , '\n' | grep -qx ro ||
            die "$dir is mounted read-write; a replica only ever mounts its volume read-only:" \
                "unmount it (or reboot) and run this again"
        return
    fi
    blockdev --setro "$real_device" || die "cannot make $real_device read-only (blockdev --setro)"
    mkdir -p "$dir"
    mount -t ext4 -o "ro,$MOUNT_OPTIONS" "$real_device" "$dir" ||
        die "cannot mount $real_device read-only at $dir (see the message above). A replica's volume is" \
            "an ext4 filesystem restored from the origin's snapshot, taken while the origin had it mounted" \
            "read-only (its ready line says mount=ro); a filesystem whose journal needs recovery is refused"
}

# Also run on failure: whatever happens after the mount, the volume is not left writable.
remount_read_only() {
    mount -o "remount,ro,$MOUNT_OPTIONS" "$dir"
}

# Prints the pair's certificate and its SHA-256 fingerprint, for clients to pin.
print_tls_certificate() {
    local fingerprint
    fingerprint=$(openssl x509 -in "$dir/tls/cert.pem" -noout -fingerprint -sha256) ||
        die "$dir/tls/cert.pem is not a certificate openssl can read"
    log "TLS certificate for $tls_name, SHA-256 fingerprint ${fingerprint#*=}:"
    cat -- "$dir/tls/cert.pem" >&2
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
    print_tls_certificate
}

# A replica serves the origin's pair, restored with the volume: it cannot make one.
check_restored_tls_pair() {
    [[ -f $dir/tls/key.pem && -f $dir/tls/cert.pem ]] ||
        die "CRYPTOSERVER_SECRETS_TLS_NAME=$tls_name is set, but $dir/tls lacks key.pem or cert.pem: a replica" \
            "never makes a TLS pair (its volume is read-only), it serves the origin's. Snapshot an origin" \
            "that had CRYPTOSERVER_SECRETS_TLS_NAME set, or unset it (and CRYPTOSERVER_TLS_*) here"
    print_tls_certificate
}

# A replica cannot give files to the service user on a read-only volume: the origin
# made them 0400 and owned by the image's fixed service UID (800, see install.sh).
check_restored_ownership() {
    local uid strangers
    uid=$(id -u -- "$owner") || die "CRYPTOSERVER_SECRETS_OWNER=$owner: no such user on this system"
    strangers=$(find "$dir" -xdev -path "$dir/lost+found" -prune -o ! -uid "$uid" -printf '%p (uid %U)\n')
    if [[ -n $strangers ]]; then
        die "$(grep -c . <<<"$strangers") entries of $dir are not owned by $owner (uid $uid), for example" \
            "$(head -3 <<<"$strangers" | paste -sd ' ');" \
            "a replica mounts its volume read-only and cannot give them back: build the replica's image" \
            "like the origin's (install.sh gives the service user uid 800)"
    fi
}

# The hot copy: a fresh filesystem on the instance-store device, which gets every
# secret and the manifest while they are hashed against the manifest. The device is
# chosen by what its NVMe controller says it is, and refused if it is, or holds, anything
# this host uses.
make_hot_copy() {
    local needed names name hot_device='' size sizes=()
    needed=$(cryptoserver-secrets size --mode "$mode") || die "cannot tell the size of the $mode secrets"
    names=$(devices_by_model "$INSTANCE_STORE_MODEL")
    [[ -n $names ]] ||
        die "CRYPTOSERVER_SECRETS_HOT_COPY=instance-store, but no block device reports the model" \
            "\"$INSTANCE_STORE_MODEL\" (block devices with a model: $(known_devices)); choose an instance type" \
            "with NVMe instance storage (i4i, m6id, c6id, r6id...) or set CRYPTOSERVER_SECRETS_HOT_COPY=off." \
            "An EBS volume is never used for the hot copy"
    for name in $names; do
        [[ -b /dev/$name ]] || die "sysfs lists $name as instance storage, but /dev/$name is not a block device"
        size=$(blockdev --getsize64 "/dev/$name") || die "cannot read the size of /dev/$name"
        sizes+=("/dev/$name: $size bytes")
        if ((size >= needed)); then
            hot_device=/dev/$name
            break
        fi
    done
    [[ -n $hot_device ]] ||
        die "no instance-store device can hold the $mode secrets ($needed bytes): $(printf '%s, ' "${sizes[@]}")" \
            "choose an instance type with more instance storage, or set CRYPTOSERVER_SECRETS_HOT_COPY=off"

    # Last guards before formatting: never the secrets volume, never a device in use.
    if [[ -n ${real_device:-} && $(stat -L -c %t:%T "$hot_device") == $(stat -L -c %t:%T "$real_device") ]]; then
        die "$hot_device is the secrets volume itself, not instance storage; it is never formatted for the hot copy"
    fi
    if mounted_at "$hot_device" "$hot_dir"; then
        umount "$hot_dir" || die "cannot unmount the previous hot copy at $hot_dir: stop cryptoserver.service first"
    fi
    if mounted_at "$hot_device"; then
        die "$hot_device is mounted ($(lsblk --noheadings --raw --output MOUNTPOINT "$hot_device" | paste -sd ' '));" \
            "the hot copy only takes an unused device (is cloud-init's mounts module mounting ephemeral0?)"
    fi

    log "making a fresh filesystem on $hot_device ($(device_model "${hot_device#/dev/}")) for the hot copy at $hot_dir"
    "${MKFS_HOT[@]}" "$hot_device" || die "mkfs.ext4 failed on $hot_device (see the message above)"
    mkdir -p "$hot_dir"
    mount -t ext4 -o "rw,$MOUNT_OPTIONS" "$hot_device" "$hot_dir" || die "cannot mount $hot_device at $hot_dir"
    trap 'umount "$hot_dir"' EXIT
    log "copying every secret in $dir to $hot_dir, verifying each against its manifest"
    cryptoserver-secrets verify --jobs "$READ_JOBS" --dir "$dir" --copy-to "$hot_dir" --owner "$owner" ||
        die "the hot copy at $hot_dir failed (see above); the server does not start: it never serves" \
            "from a copy that did not match, nor falls back to $dir"
    mount -o "remount,ro,$MOUNT_OPTIONS" "$hot_dir"
    trap - EXIT

    # The server unit reads this after /etc/cryptoserver/env: it serves the hot copy.
    mkdir -p -- "$(dirname -- "$runtime_env")"
    printf '# Written by %s at boot: the server reads the verified hot copy.\nCRYPTOSERVER_SECRETDIR=%s\n' \
        "$PROGRAM" "$hot_dir" >"$runtime_env.tmp"
    mv -f -- "$runtime_env.tmp" "$runtime_env"
}

# Requires the manifest's fingerprint (of secrets of $mode) to be the expected one; prints it.
checked_fingerprint() {
    local fingerprint
    fingerprint=$(cryptoserver-secrets fingerprint --dir "$dir" --mode "$mode") ||
        die "cannot read the fingerprint of the secrets in $dir (see above)"
    if [[ -n $expected && $fingerprint != "$expected" ]]; then
        die "the secrets in $dir have fingerprint $fingerprint, not the expected $expected" \
            "(CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT): ${volume:-this volume} holds another set of secrets;" \
            "restore the volume from the snapshot tagged cryptoserver:fingerprint=$expected"
    fi
    echo "$fingerprint"
}

mount=none
volume=-
if [[ $device != none ]]; then
    ((EUID == 0)) || die "mounting ${device:-the secrets volume} needs root"
    wait_for_device
    real_device=$(readlink -f "$device")
    volume=${volume_id:-$(volume_of "$real_device")}
    mount=ro
    if [[ $generates == true ]]; then
        mount_read_write
        trap remount_read_only EXIT
    else
        mount_read_only
    fi
fi

verified=yes
if [[ $generates == true ]]; then
    # The generator writes its manifest last: present before the run means nothing was missing.
    already_complete=false
    [[ -f $dir/$MANIFEST ]] && already_complete=true

    log "generating the missing $mode secrets in $dir"
    cryptoserver-secrets generate --mode "$mode" --dir "$dir" --owner "$owner" ||
        die "generating the $mode secrets in $dir failed (see above); run this again once the cause is fixed"
    fingerprint=$(checked_fingerprint)
    if [[ $hot_copy != off ]]; then
        log "not re-hashing the secrets in place: the hot copy verifies every file as it copies it"
    elif [[ $verify_policy == always || $already_complete == false ]]; then
        log "verifying every secret in $dir against its manifest"
        cryptoserver-secrets verify --jobs "$READ_JOBS" --dir "$dir" ||
            die "the secrets in $dir do not match their manifest (see above); the server does not start"
    else
        log "not re-hashing the secrets (CRYPTOSERVER_SECRETS_VERIFY=$verify_policy; none was written)"
        verified=skipped
    fi
    if [[ -n $tls_name ]]; then
        keep_tls_pair
    fi
    if [[ $device != none ]]; then
        trap - EXIT
        remount_read_only
    fi
else
    if [[ ! -f $dir/$MANIFEST ]]; then
        if [[ $role == origin ]]; then
            die "$dir/$MANIFEST is missing: ${real_device:-$dir} is not a complete set of secrets (the origin" \
                "writes its manifest last), and this origin never completes one that existed before" \
                "($kept_because):" \
                "new keys would change MACs already issued. Restore a snapshot taken after the origin's ready line"
        fi
        die "$dir/$MANIFEST is missing: ${real_device:-$dir} is not a complete secrets volume (the origin" \
            "writes its manifest last); make the snapshot from an origin whose console printed its ready line"
    fi
    fingerprint=$(checked_fingerprint)
    check_restored_ownership
    if [[ -n $tls_name ]]; then
        check_restored_tls_pair
    fi
    if [[ $hot_copy == off ]]; then
        # Reading every file also loads every block of a volume restored lazily from its snapshot.
        log "verifying every secret in $dir against its manifest (read-only)"
        cryptoserver-secrets verify --jobs "$READ_JOBS" --dir "$dir" ||
            die "the secrets in $dir do not match their manifest (see above); this host does not serve them"
    fi
fi

served=none
if [[ $hot_copy != off ]]; then
    make_hot_copy
    served=$hot_dir
fi

note=
[[ $served == none ]] || note="; the server reads the hot copy at $served"
log "the $mode secrets in $dir are ready${real_device:+ (mounted read-only from $real_device)}$note"
log "ready role=$role mode=$mode fingerprint=$fingerprint verified=$verified mount=$mount volume=$volume hot-copy=$served"
