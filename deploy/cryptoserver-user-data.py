#!/usr/bin/python3
"""Writes cryptoserver's settings from the instance's user data, and nothing else.

On the sealed image cloud-init consumes no user data (`allow_userdata: false`,
packer/close-doors.sh): it runs no boothook, script, part handler or module taken from
it, and writes no file. It still stores the raw user data, and this program, run by
cryptoserver-user-data.service before the secrets are prepared, reads it: from its
cloud-config (a `#cloud-config` document, or the text/cloud-config parts of a MIME
multipart) it takes the `write_files` entries of /etc/cryptoserver/env and
/etc/cryptoserver/tokens, the two files terraform/modules/user-data writes, and writes
them with the owners and modes the service expects. Everything else is named on the
console and ignored. Like cloud-init's write_files, it writes once per instance: a
changed user data on a stopped instance changes nothing (Terraform replaces the
instance instead).

Usage: cryptoserver-user-data.py [USER_DATA [ROOT]]  (defaults: cloud-init's copy, /)
"""

import email
import os
import pathlib
import sys

import yaml

PROGRAM = "cryptoserver-user-data"
USER_DATA = "/var/lib/cloud/instance/user-data.txt"
# The files user data may write: path -> (owner, group, mode).
ALLOWED = {
    "/etc/cryptoserver/env": ("root", "root", 0o644),
    "/etc/cryptoserver/tokens": ("root", "cryptoserver", 0o640),
}
ENV_FILE = "/etc/cryptoserver/env"


def log(message):
    print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)


def fail(message):
    log(f"error: {message}")
    sys.exit(1)


def cloud_configs(text):
    """The cloud-config documents of the user data, each as text; other parts are named and ignored."""
    if text.startswith("#cloud-config"):
        return [text]
    if text.lstrip().lower().startswith(("content-type:", "mime-version:")):
        configs = []
        for part in email.message_from_string(text).walk():
            if part.is_multipart():
                continue
            kind = part.get_content_type()
            if kind == "text/cloud-config":
                configs.append(part.get_payload(decode=True).decode())
            else:
                log(f"ignoring a {kind} part of the user data: this image runs nothing from user data")
        return configs
    first = text.splitlines()[0][:40] if text else "(empty)"
    fail(f"the user data is not a #cloud-config document (it starts with {first!r}); "
         "this image reads only the cloud-config terraform/modules/user-data writes")


def wanted_files(configs):
    """{path: content} of the allowed write_files entries."""
    files = {}
    for text in configs:
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            fail(f"the user data's cloud-config is not YAML: {error}")
        if not isinstance(config, dict):
            fail("the user data's cloud-config is not a mapping")
        ignored = sorted(key for key in config if key != "write_files")
        if ignored:
            log(f"ignoring {', '.join(map(str, ignored))} in the user data: this image only writes its settings")
        for entry in config.get("write_files") or []:
            path = entry.get("path") if isinstance(entry, dict) else None
            if path not in ALLOWED:
                log(f"ignoring a write_files entry for {path!r}: only {' and '.join(ALLOWED)} are written")
                continue
            if entry.get("encoding", "text/plain") not in ("text/plain", None) or not isinstance(entry.get("content"), str):
                fail(f"the write_files entry for {path} is not plain text")
            files[path] = entry["content"]
    return files


def local_id(root, database, name):
    """The id of user or group `name` in ROOT/etc/passwd or ROOT/etc/group (the service
    user is a local system user: no other name service is asked)."""
    for line in (pathlib.Path(root) / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    fail(f"no {name} in {database}: is cryptoserver installed (deploy/install.sh)?")


def write(root, path, content):
    """Writes `content` to ROOT/path with its owner and mode, through a temporary file."""
    user, group, mode = ALLOWED[path]
    target = pathlib.Path(root) / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    pending = target.with_name(f".{target.name}.tmp")
    with open(pending, "w") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    os.chown(pending, local_id(root, "passwd", user), local_id(root, "group", group))
    os.chmod(pending, mode)
    os.replace(pending, target)


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else USER_DATA
    root = sys.argv[2] if len(sys.argv) > 2 else "/"
    if (pathlib.Path(root) / ENV_FILE.lstrip("/")).exists():
        log(f"{ENV_FILE} was written at this instance's first boot; user data is read once per instance")
        return
    try:
        text = pathlib.Path(source).read_text()
    except OSError as error:
        fail(f"cannot read the user data at {source}: {error.strerror}; did cloud-init run "
             "(the instance's user data must be the cloud-config of terraform/modules/user-data)?")
    files = wanted_files(cloud_configs(text))
    if ENV_FILE not in files:
        fail(f"the user data writes no {ENV_FILE}: give the instance the user data terraform/modules/user-data renders")
    # The env file last: its presence marks the instance's settings as written.
    for path in sorted(files, key=lambda path: path == ENV_FILE):
        write(root, path, files[path])
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
