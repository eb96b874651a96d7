"""The two EC2 emulators every test in tests/aws runs against, moto's server and
LocalStack, each started once per test run on a loopback port (a pytest plugin,
so that every test module shares the two processes), and the ways the tests run
xtask-aws against them. Every request goes to 127.0.0.1 with fake credentials;
nothing reaches AWS."""

import base64
import contextlib
import hashlib
import http.server
import itertools
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import boto3
import pytest
import requests
import trustme

from conftest import REPO, binary, free_port, stop, wait_until_ready

REGION = "us-east-1"
SERVICE_PORT = 8080
LOCALSTACK_VENV = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "localstack-venv"
LOCALSTACK_REQUIREMENTS = REPO / "tests" / "aws" / "localstack-requirements.txt"
# Where LocalStack writes when nothing redirects it: these tests must not.
LOCALSTACK_DEFAULT_DIRS = [pathlib.Path("/var/lib/localstack"), pathlib.Path("/tmp/localstack")]


def moto_server_command():
    """moto_server from the virtual environment running the tests, else from PATH."""
    beside_python = pathlib.Path(sys.executable).parent / "moto_server"
    found = beside_python if beside_python.exists() else shutil.which("moto_server")
    if not found:
        pytest.fail("moto_server is missing: `pip install -r tests/requirements.txt` (or run `cargo xtask ci`)")
    return str(found)


def localstack_python():
    """The Python of target/localstack-venv, which `cargo xtask ci` fills from the pinned requirements."""
    python = LOCALSTACK_VENV / "bin" / "python"
    stamp = LOCALSTACK_VENV / "requirements.sha256"
    wanted = hashlib.sha256(LOCALSTACK_REQUIREMENTS.read_bytes()).hexdigest()
    if not python.exists() or not stamp.exists() or stamp.read_text() != wanted:
        pytest.fail(
            f"LocalStack is not installed in {LOCALSTACK_VENV} as {LOCALSTACK_REQUIREMENTS.name} pins it: "
            "run `cargo xtask ci`, which installs it"
        )
    return python


@contextlib.contextmanager
def running(name, command, env, ready_url, log_path, ready=lambda answer: True):
    """A server process, ready once `ready_url` answers as `ready` wants; stopped by
    its process id: SIGTERM, then SIGKILL if it has not exited 30 s later."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(
            process,
            name,
            lambda: ready(requests.get(ready_url, timeout=1)),
            120,
            lambda: log_path.read_text(errors="replace"),
            interval=0.1,
        )
        yield
    finally:
        stop(process, 30)


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [moto_server_command(), "-H", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with running("moto_server", command, os.environ.copy(), f"{url}/moto-api/", log_path):
        yield url


@pytest.fixture(scope="session")
def localstack_url(tmp_path_factory):
    python = localstack_python()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = tmp_path_factory.mktemp("localstack")
    for name in ("filesystem", "tmp", "home", "cache"):
        (root / name).mkdir()
    untouched = [path for path in LOCALSTACK_DEFAULT_DIRS if not path.exists()]
    env = {
        "PATH": os.environ.get("PATH", ""),
        # Only EC2, on this loopback port: its default server ignores the address
        # and listens on every interface, and DNS_ADDRESS=0 keeps it from serving
        # DNS on port 53 of every interface.
        "SERVICES": "ec2",
        "GATEWAY_SERVER": "hypercorn",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "DNS_ADDRESS": "0",
        # Every directory it writes under `root`: its state, libraries, cache and
        # config (FILESYSTEM_ROOT, HOME's ~/.localstack), Python's temporary files,
        # plux's entry-point cache. OVERRIDE_IN_DOCKER=0: inside a container it
        # would use /var/lib/localstack instead.
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(root / "filesystem"),
        "TMPDIR": str(root / "tmp"),
        "HOME": str(root / "home"),
        "XDG_CACHE_HOME": str(root / "cache"),
        # Nothing leaves the machine: no usage events, no certificate download
        # (it makes a self-signed one).
        "DISABLE_EVENTS": "1",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
    }
    command = [str(python), "-m", "localstack.runtime.main"]

    def ec2_up(answer):
        return answer.ok and answer.json()["services"].get("ec2") in ("available", "running")

    with running("LocalStack", command, env, f"{url}/_localstack/health", root / "localstack.log", ec2_up):
        yield url
    leaked = [str(path) for path in untouched if path.exists()]
    assert not leaked, f"LocalStack wrote outside its temporary directory {root}: {leaked}"


class Emulator:
    """An EC2 emulator on loopback, seen from an empty account."""

    def __init__(self, name, url, access_key_id):
        self.name = name
        self.url = url
        self.access_key_id = access_key_id

    def client(self, service="ec2", region=REGION):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key="testing",
        )


# LocalStack (free edition) has no API to reset its state, but takes a 12-digit
# access key id as the account id: each test gets a new, empty account.
_localstack_accounts = itertools.count(100000000001)


@pytest.fixture(params=["moto", "localstack"])
def emulator(request):
    if request.param == "moto":
        url = request.getfixturevalue("moto_url")
        requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        return Emulator("moto", url, "testing")
    url = request.getfixturevalue("localstack_url")
    return Emulator("localstack", url, f"{next(_localstack_accounts):012d}")


@pytest.fixture
def ec2(emulator):
    return emulator.client()


def tool_env(tmp_path, emulator, endpoint_url=None):
    """Fake credentials, and no AWS setting of this machine (profiles, CA bundles, real endpoints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=emulator.access_key_id,
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
    )
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


def run_tool(tmp_path, emulator, command, instance_id, *args, endpoint_url=None):
    """xtask-aws `command` on one instance."""
    return run_aws(tmp_path, emulator, command, "--instance-id", instance_id, *args, endpoint_url=endpoint_url)


def run_aws(tmp_path, emulator, *args, endpoint_url=None):
    """xtask-aws with `args`, pointed at the emulator (or at `endpoint_url`, a proxy in front of it)."""
    endpoint_url = endpoint_url or emulator.url
    assert endpoint_url.startswith("http://127.0.0.1:"), "tests must only ever talk to loopback"
    result = subprocess.run(
        [binary("xtask-aws"), *args, "--endpoint-url", endpoint_url],
        env=tool_env(tmp_path, emulator),
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(result.stdout, result.stderr)
    return result



def check_lines(stdout):
    return {int(line.split()[1].rstrip(".")): line for line in stdout.splitlines() if line[:4] in ("PASS", "FAIL")}



EC2_XML = "http://ec2.amazonaws.com/doc/2016-11-15/"


@contextlib.contextmanager
def proxy(url, answer):
    """A loopback proxy to the emulator at `url`. `answer(params)` sees each request's
    form parameters (Action=...; every AWS query API the tools call sends them) and
    returns (status, XML body) to answer it itself, or None to pass it on unchanged."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            params = {key: values[0] for key, values in urllib.parse.parse_qs(body.decode()).items()}
            own = answer(params)
            if own is not None:
                status, reply = own
                content_type = "text/xml"
            else:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                forwarded = requests.post(url + self.path, data=body, headers=headers, timeout=30)
                reply, status = forwarded.content, forwarded.status_code
                content_type = forwarded.headers.get("Content-Type", "text/xml")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def denying_proxy(url, denied_action):
    """A proxy to the emulator that refuses one EC2 action the way an IAM policy would."""

    def answer(params):
        if params.get("Action") != denied_action:
            return None
        return 403, (
            b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
            b"<Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation."
            b"</Message></Error></Errors><RequestID>denied</RequestID></Response>"
        )

    return proxy(url, answer)


def console_proxy(url, consoles):
    """A proxy to the emulator that answers GetConsoleOutput for the instances in
    `consoles` (instance id: text, read at each request) as EC2 does, base64-encoded.
    Neither emulator can be told what an instance printed: both answer every instance
    with the same 2006 Xen boot log."""

    def answer(params):
        instance_id = params.get("InstanceId")
        if params.get("Action") != "GetConsoleOutput" or instance_id not in consoles:
            return None
        output = base64.b64encode(consoles[instance_id].encode()).decode()
        return 200, (
            f'<?xml version="1.0" encoding="UTF-8"?><GetConsoleOutputResponse xmlns="{EC2_XML}">'
            f"<requestId>console</requestId><instanceId>{instance_id}</instanceId>"
            f"<timestamp>{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime())}</timestamp>"
            f"<output>{output}</output></GetConsoleOutputResponse>"
        ).encode()

    return proxy(url, answer)


def pinned_certificates(directory, name="cryptoserver.internal"):
    """Files in `directory`: a certificate for `name` (and localhost, for
    running_server's own /healthz check) with its key, the CA to pin it by, and a
    stranger CA that pins nothing: (pinned, cert, key, other) paths."""
    ca, stranger = trustme.CA(), trustme.CA()
    pinned, cert, key, other = (directory / name for name in ["pinned.pem", "cert.pem", "key.pem", "other.pem"])
    ca.cert_pem.write_to_path(str(pinned))
    stranger.cert_pem.write_to_path(str(other))
    issued = ca.issue_cert(name, "localhost")
    issued.private_key_pem.write_to_path(str(key))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    return pinned, cert, key, other
