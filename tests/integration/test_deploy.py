"""deploy/ as written: the systemd units, gateway.env.example, and nginx in front of two gateways.

The units are checked by systemd's own parser after moving only the install
paths that do not exist on a test machine (/opt/push-gateway, /etc/push-gateway);
their commands are run the way systemd would run them (working directory,
Environment=, EnvironmentFile=, UnsetEnvironment=). nginx runs the deploy
config unchanged except for its listen addresses, upstream servers, and the
paths of its certificate (made for the test) and access log.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import socketio
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Config
from gateway.publisher import Publisher
from gateway.subscriptions import Registry
from tests.integration.support import (
    REPO,
    SECRET,
    Client,
    GatewayProcess,
    RedisServer,
    connection_keys,
    free_port,
    unclean_lines,
    unique_user,
    wait_for,
)

StartGateway = Callable[..., GatewayProcess]

SYSTEMD = REPO / "deploy" / "systemd"
NGINX_SITE = REPO / "deploy" / "nginx" / "push-gateway.conf"
GATEWAY_UNIT, SWEEP_UNIT, SWEEP_TIMER = "push-gateway.service", "push-gateway-sweep.service", "push-gateway-sweep.timer"
ENV_EXAMPLE = SYSTEMD / "gateway.env.example"
#: The install layout the units name, and where the same things are on a test machine.
INSTALL_DIR, VENV_BIN, ENV_FILE, RUNTIME_DIR = (
    "/opt/push-gateway", "/opt/push-gateway/.venv/bin", "/etc/push-gateway/gateway.env", "/run/push-gateway",
)
HERE_BIN = Path(sys.executable).parent
#: Settings of gateway.env.example that are the site's own, not defaults.
SITE_VARIABLES = ("GATEWAY_REDIS_URL", "GATEWAY_BIND", "GATEWAY_JWT_SECRET")
#: A line systemd and a shell read the same way: no quotes, spaces, escapes or expansions.
ENV_LINE = re.compile(r"([A-Z][A-Z0-9_]*)=([^\s\"'\\$`]*)")
#: Clients of the two-gateway test: at least this many, at most the second number.
MIN_CLIENTS, MAX_CLIENTS = 6, 24


# --- reading the deploy files ----------------------------------------------------------------------------------------


def unit_text(name: str) -> str:
    return (SYSTEMD / name).read_text()


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file by key, in order (sections and comments dropped)."""
    settings: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key].append(value)
    return settings


def one(text: str, key: str) -> str:
    values = unit_settings(text)[key]
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def env_example() -> dict[str, str]:
    """The active assignments of gateway.env.example; fails on a line systemd and a shell would read apart."""
    values = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = ENV_LINE.fullmatch(line)
        assert match, f"gateway.env.example:{number}: not a plain VARIABLE=value line: {line!r}"
        assert match[1] not in values, f"gateway.env.example:{number}: {match[1]} set twice"
        values[match[1]] = match[2]
    return values


def here(path: str) -> str:
    """Where an installed path of the units is on this machine, when it does not exist here."""
    if Path(path).exists():
        return path
    if path.startswith(VENV_BIN + "/"):
        return str(HERE_BIN / path[len(VENV_BIN) + 1:])
    if path == INSTALL_DIR:
        return str(REPO)
    return path


def command(unit: str, key: str) -> list[str]:
    """The argv of a unit's ExecStart=/ExecStartPre=/..., its binary moved to this machine's venv."""
    argv = shlex.split(one(unit, key))
    return [here(argv[0]), *argv[1:]]


def service_environment(unit: str, env_file: dict[str, str], home: Path) -> dict[str, str]:
    """The environment systemd hands the unit's processes: a minimal base, then Environment=,
    then EnvironmentFile= (which overrides it), then UnsetEnvironment=."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    settings = unit_settings(unit)
    for assignment in settings["Environment"]:
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            env[key] = value
    env.update(env_file)
    for key in " ".join(settings["UnsetEnvironment"]).split():
        env.pop(key, None)
    return env


def run_as_service(unit: str, key: str, env_file: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """Run one of a unit's commands as systemd would, minus the sandbox and the user switch."""
    return subprocess.run(
        command(unit, key), cwd=here(one(unit, "WorkingDirectory")), env=service_environment(unit, env_file, home),
        capture_output=True, text=True, timeout=60,
    )


def filled_in(redis_url: str, prefix: str, run_dir: Path, **extra: str) -> dict[str, str]:
    """gateway.env.example with its placeholders filled in for this machine, as an operator would."""
    values = env_example()
    values.update(
        GATEWAY_REDIS_URL=redis_url, GATEWAY_JWT_SECRET=SECRET, GATEWAY_KEY_PREFIX=prefix,
        GATEWAY_BIND=f"127.0.0.1:{free_port()}",
    )
    values["PROMETHEUS_MULTIPROC_DIR"] = values["PROMETHEUS_MULTIPROC_DIR"].replace(RUNTIME_DIR, str(run_dir), 1)
    values.update(extra)
    return values


def gunicorn_setting(name: str) -> int:
    match = re.search(rf"^{name} = (\d+)$", (REPO / "gunicorn.conf.py").read_text(), re.MULTILINE)
    assert match, f"gunicorn.conf.py sets no {name}"
    return int(match[1])


def seconds(span: str) -> float:
    """A time span as systemd and nginx write it: 30, 30s, 2m, 2min."""
    match = re.fullmatch(r"(\d+)(s|m|min)?", span)
    assert match, f"not a simple time span: {span!r}"
    return int(match[1]) * (60 if match[2] in ("m", "min") else 1)


def size(value: str) -> int:
    """A size in bytes as systemd writes it: 512M, 6G."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert match, f"not a simple size: {value!r}"
    return int(match[1]) * 1024 ** " KMGT".index(match[2] or " ")


def needs(program: str, package: str) -> pytest.MarkDecorator:
    """Skip, saying what to install, only when ``program`` is missing (decided before any fixture starts)."""
    return pytest.mark.skipif(
        shutil.which(program) is None, reason=f"{program} is not installed (apt-get install {package})"
    )


needs_systemd = needs("systemd-analyze", "systemd")
needs_nginx = needs("nginx", "nginx")


# --- every deploy file says why -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [SYSTEMD / GATEWAY_UNIT, SYSTEMD / SWEEP_UNIT, SYSTEMD / SWEEP_TIMER, ENV_EXAMPLE, NGINX_SITE],
    ids=lambda path: path.name,
)
def test_a_comment_comes_before_every_setting(path: Path) -> None:
    """STYLE.md practice 15: each setting, assignment or directive is preceded by a comment saying why."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    bare = [
        f"{path.name}:{number}: {line}" for number, line in enumerate(lines, 1)
        if line and not line.startswith(("#", "[", "}")) and not lines[number - 2].startswith("#")
    ]
    assert bare == []


# --- systemd ---------------------------------------------------------------------------------------------------------


@needs_systemd
def test_systemd_verifies_the_units_without_a_warning(tmp_path: Path) -> None:
    env_file = tmp_path / "gateway.env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    paths = []
    for name in (GATEWAY_UNIT, SWEEP_UNIT, SWEEP_TIMER):
        text = unit_text(name)
        for key in ("ExecStartPre", "ExecStart", "ExecReload", "WorkingDirectory"):
            for value in unit_settings(text)[key]:
                path = shlex.split(value)[0]
                text = text.replace(f"{key}={path}", f"{key}={here(path)}", 1)
        if unit_settings(text)["EnvironmentFile"]:
            assert one(text, "EnvironmentFile") == ENV_FILE
            text = text.replace(f"EnvironmentFile={ENV_FILE}\n", f"EnvironmentFile={env_file}\n")
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", *paths],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # Complaints about the machine's own units (under /lib or /etc) are not ours; anything else is.
    machine = ("/lib/systemd/", "/usr/lib/systemd/", "/etc/")
    ours = [line for line in output.splitlines() if not line.startswith(machine)]
    assert ours == []


@needs_systemd
def test_systemd_rates_both_services_well_sandboxed(tmp_path: Path) -> None:
    paths = []
    for name in (GATEWAY_UNIT, SWEEP_UNIT):
        (tmp_path / name).write_text(unit_text(name))
        paths.append(str(tmp_path / name))
    # Exposure runs from 0 (locked down) to 10 (unprotected), the threshold in tenths: at most 2.0, systemd's "OK".
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", *paths],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


@needs_systemd
def test_the_sweep_timer_fires_every_minute() -> None:
    timer = unit_text(SWEEP_TIMER)
    assert one(timer, "Unit") == SWEEP_UNIT
    assert seconds(one(timer, "RandomizedDelaySec")) < 60
    result = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=3", one(timer, "OnCalendar")],
        capture_output=True, text=True, timeout=30, env={**os.environ, "TZ": "UTC"},
    )
    assert result.returncode == 0, result.stderr
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", result.stdout)
    times = [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S") for stamp in stamps]
    assert len(times) == 3, result.stdout
    assert [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:], strict=False)] == [60, 60]


def test_the_gateway_unit_outlasts_gunicorns_graceful_stop_and_connection_limit() -> None:
    unit = unit_text(GATEWAY_UNIT)
    assert seconds(one(unit, "TimeoutStopSec")) > gunicorn_setting("graceful_timeout")
    assert int(one(unit, "LimitNOFILE")) > gunicorn_setting("worker_connections")
    assert one(unit, "KillMode") == "mixed" and one(unit, "KillSignal") == "SIGTERM"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert command(unit, "ExecStart")[1:] == ["-c", "gunicorn.conf.py", "gateway.wsgi:app"]
    # gateway.env points the metrics into the unit's RuntimeDirectory=, which systemd creates for it.
    assert env_example()["PROMETHEUS_MULTIPROC_DIR"].startswith(f"/run/{one(unit, 'RuntimeDirectory')}")
    for name in (GATEWAY_UNIT, SWEEP_UNIT):
        text = unit_text(name)
        assert one(text, "User") == "push-gateway" and one(text, "WorkingDirectory") == INSTALL_DIR
        assert one(text, "EnvironmentFile") == ENV_FILE


def test_the_gateway_unit_bounds_its_memory_tasks_and_network_peers() -> None:
    unit = unit_text(GATEWAY_UNIT)
    sized_for = re.search(r"Sized here for GATEWAY_WORKERS=(\d+)", unit)
    assert sized_for, "the unit says for how many workers its memory limits are sized"
    workers = int(sized_for[1])
    # Every worker full (worker_connections clients at about 50 KiB each) stays below the soft limit ...
    high, maximum = size(one(unit, "MemoryHigh")), size(one(unit, "MemoryMax"))
    assert workers * gunicorn_setting("worker_connections") * 50 * 1024 < high < maximum
    # ... and an out-of-memory kill takes one worker, not the whole service.
    assert one(unit, "OOMPolicy") == "continue"
    assert int(one(unit, "TasksMax")) >= 15 * workers
    # Nobody but the allowed peers, among them this machine itself and the Prometheus host nginx lets read /metrics.
    assert one(unit, "IPAddressDeny") == "any"
    allowed = set(" ".join(unit_settings(unit)["IPAddressAllow"]).split())
    assert "localhost" in allowed
    assert set(site_directives("allow", site_location("= /metrics"))) - {"127.0.0.1", "::1"} <= allowed


# --- gateway.env.example and the command before every start -----------------------------------------------------------


def test_the_env_example_lists_every_variable_with_its_default() -> None:
    text = ENV_EXAMPLE.read_text()
    active = env_example()
    listed = set(active) | set(re.findall(r"^#([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    known = {spec.metadata["variable"] for spec in fields(Config)}
    assert known - listed == set(), "variables of gateway/config.py missing from gateway.env.example"
    assert {name for name in active if name.startswith("GATEWAY_")} <= known, "unknown GATEWAY_* variables"
    required = {"GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0", "GATEWAY_JWT_SECRET": SECRET}
    site = {name: value for name, value in active.items() if name not in SITE_VARIABLES}
    # Every active line other than the site's own settings says the default.
    assert Config.from_env({**site, **required}) == Config.from_env(required)


def test_check_config_before_every_start_refuses_the_example_until_it_is_filled_in(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    unit = unit_text(GATEWAY_UNIT)
    shipped = run_as_service(unit, "ExecStartPre", env_example(), tmp_path)
    assert shipped.returncode != 0
    assert shipped.stderr.strip().splitlines() == [
        "gateway: GATEWAY_JWT_SECRET: is not set: set it, GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS_URL"
    ]
    values = filled_in(redis_server.url, "check", tmp_path / "run")
    accepted = run_as_service(unit, "ExecStartPre", values, tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert "GATEWAY_JWT_SECRET=(set)" in accepted.stdout.splitlines() and SECRET not in accepted.stdout
    bad = run_as_service(unit, "ExecStartPre", {**values, "GATEWAY_WORKERS": "0"}, tmp_path)
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("gateway: GATEWAY_WORKERS: ")


# --- nginx -----------------------------------------------------------------------------------------------------------

#: Where the site keeps its certificate and its access log on a real machine; the test moves both into its folder.
TLS_DIR, LOG_DIR = "/etc/ssl/push.example.com/", "/var/log/nginx/"
#: The handshake of a Socket.IO client that speaks WebSocket only.
HANDSHAKE = "/socket.io/?EIO=4&transport=websocket"
#: The headers of a WebSocket handshake (RFC 6455 section 4.1).
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
#: Variables that hold a request's query string, which may carry a client's token.
QUERY_VARIABLES = {"request", "request_uri", "args", "query_string", "http_referer"}


def rewritten_once(text: str, pattern: str, replacement: str, what: str) -> str:
    """``text`` with the one directive line matching ``pattern`` (after its indent) replaced."""
    text, count = re.subn(rf"^(\s*){pattern}", lambda match: match[1] + replacement, text, flags=re.MULTILINE)
    assert count == 1, f"the site should have one {what}, not {count}"
    return text


def site_config(upstreams: list[str], folder: Path, http_port: int, https_port: int) -> str:
    """deploy/nginx/push-gateway.conf with its listen addresses and upstream servers moved to loopback and its
    certificate and access log moved into ``folder``."""
    text = NGINX_SITE.read_text()
    text = rewritten_once(text, r"listen\s+80;", f"listen 127.0.0.1:{http_port};", "listen 80 (the redirect)")
    text = rewritten_once(text, r"listen\s+443 ssl\b", f"listen 127.0.0.1:{https_port} ssl", "listen 443 ssl")
    text = text.replace(TLS_DIR, f"{folder}/").replace(LOG_DIR, f"{folder}/")
    block = re.search(r"^upstream push_gateway \{\n(.*?)^\}", text, re.MULTILINE | re.DOTALL)
    assert block, "no upstream push_gateway block"
    servers = re.findall(r"^(\s*server\s+)(\S+)([^;\n]*;)\n", block[1], re.MULTILINE)
    assert len(servers) >= len(upstreams) >= 1, f"{len(servers)} servers in the upstream"
    body = block[1]
    for index, (indent, address, options) in enumerate(servers):
        line = f"{indent}{address}{options}\n"
        body = body.replace(line, f"{indent}{upstreams[index]}{options}\n" if index < len(upstreams) else "", 1)
    return text.replace(block[1], body, 1)


def site_directives(name: str, text: str | None = None) -> list[str]:
    """The arguments of every ``name`` directive of the site (or of ``text``), in order."""
    return re.findall(rf"^\s*{name}\s+([^;]*);", NGINX_SITE.read_text() if text is None else text, re.MULTILINE)


def site_location(path: str) -> str:
    block = re.search(rf"location {re.escape(path)} \{{(.*?)\n    \}}", NGINX_SITE.read_text(), re.DOTALL)
    assert block, f"no location {path}"
    return block[1]


def write_certificates(certificate: Path, key: Path, authority: Path) -> None:
    """A test certificate authority, and a certificate from it for push.example.com and 127.0.0.1."""
    now = datetime.now(UTC)
    ca_key, site_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push gateway test CA")])

    def issued(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1)))

    ca = issued(ca_name, ca_key.public_key()).add_extension(
        x509.BasicConstraints(ca=True, path_length=0), critical=True
    ).sign(ca_key, hashes.SHA256())
    site = issued(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push.example.com")]), site_key.public_key())
    names = [x509.DNSName("push.example.com"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    site = site.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
        x509.SubjectAlternativeName(names), critical=False
    )
    pem = serialization.Encoding.PEM
    certificate.write_bytes(site.sign(ca_key, hashes.SHA256()).public_bytes(pem) + ca.public_bytes(pem))
    key.write_bytes(site_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key.chmod(0o600)
    authority.write_bytes(ca.public_bytes(pem))


class Nginx:
    """nginx in the foreground with the deploy site in front of ``upstreams``; stopped by its PID.

    ``url`` is the TLS server (https://, wss://), ``plain_url`` the port-80 one; clients trust ``ca``.
    """

    def __init__(self, folder: Path, upstreams: list[str]) -> None:
        self.folder = folder
        self.port, self.plain_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.plain_url = f"http://127.0.0.1:{self.plain_port}"
        self.error_log = folder / "error.log"
        #: Where nginx.conf's own http-level access_log writes: the site's servers must not use it.
        self.default_access_log = folder / "access.log"
        self.ca = folder / "ca.pem"
        folder.mkdir()
        site = site_config(upstreams, folder, self.plain_port, self.port)
        (folder / "push-gateway.conf").write_text(site)
        (certificate,), (key,) = site_directives("ssl_certificate", site), site_directives("ssl_certificate_key", site)
        write_certificates(Path(certificate), Path(key), self.ca)
        (self.access_log,) = {Path(line.split()[0]) for line in site_directives("access_log", site)}
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers that can read the test's private tmp dir
        temp = "".join(f"{kind}_temp_path {folder}/{kind}_temp;\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                                 "uwsgi", "scgi"))
        (folder / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {self.error_log} notice;\n"
            f"events {{ worker_connections 512; }}\n"
            f"http {{\naccess_log {self.default_access_log};\n{temp}include {folder}/push-gateway.conf;\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> list[str]:
        return ["nginx", "-p", f"{self.folder}/", "-c", str(self.folder / "nginx.conf"), "-e", str(self.error_log),
                *args]

    def test(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        with open(self.folder / "stderr.log", "ab") as log:
            self.process = subprocess.Popen(self.command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._answers, 10, "nginx answers /healthz over TLS")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"nginx exited with {self.process.returncode}:\n{self.errors()}")
        try:
            return self.get("/healthz").status_code == 200
        except requests.ConnectionError:
            return False

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """``path`` from the TLS server, its certificate checked against the test's CA."""
        return requests.get(self.url + path, verify=str(self.ca), timeout=5, **kwargs)

    def client(self, token: str | None, *, user: str, url: str | None = None, **kwargs: Any) -> Client:
        """A Socket.IO client of the TLS server (wss://), trusting the test's CA."""
        session = requests.Session()
        session.verify = str(self.ca)
        return Client(url or self.url, token, user=user, http_session=session, **kwargs)

    @contextmanager
    def tls_connection(self, source: str) -> Iterator[ssl.SSLSocket]:
        """A TLS connection to the site from loopback address ``source``."""
        context = ssl.create_default_context(cafile=str(self.ca))
        with (socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0)) as raw,
              context.wrap_socket(raw, server_hostname="127.0.0.1") as sock):
            yield sock

    def status_from(self, source: str, path: str, *, upgrade: bool = False) -> int:
        """The status nginx answers a GET of ``path`` with, to a client at loopback address ``source``; with
        ``upgrade``, the GET asks for a WebSocket, which is closed as soon as the status line arrives."""
        headers = UPGRADE if upgrade else {"Connection": "close"}
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", *(f"{k}: {v}" for k, v in headers.items())]
        with self.tls_connection(source) as sock:
            sock.sendall("\r\n".join([*lines, "", ""]).encode())
            status_line = sock.makefile("rb").readline().decode()
        return int(status_line.split()[1])

    def handshake(self, source: str = "127.0.0.1", origin: str | None = None, header: list[str] | None = None
                  ) -> tuple[int, bool]:
        """Open a WebSocket to the handshake path: the HTTP status, and whether Engine.IO's open packet came.

        Without ``origin`` the client sends the site's own (https://127.0.0.1:<port>), as a page of it would.
        """
        with self.tls_connection(source) as sock:
            try:
                ws = websocket.create_connection(f"wss://127.0.0.1:{self.port}{HANDSHAKE}", socket=sock, timeout=5,
                                                 origin=origin, header=header or [])
            except websocket.WebSocketBadStatusException as refused:
                return refused.status_code, False
            try:
                return ws.status, ws.recv().startswith("0")
            except websocket.WebSocketConnectionClosedException:
                return ws.status, False
            finally:
                ws.shutdown()

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # fast shutdown: open WebSockets are cut, not waited for
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("nginx did not stop within 10 s") from None


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[[list[GatewayProcess]], Nginx]]:
    started: list[Nginx] = []

    def start(gateways: list[GatewayProcess]) -> Nginx:
        nginx = Nginx(tmp_path / f"nginx{len(started)}", [gateway.config.bind for gateway in gateways])
        started.append(nginx)
        return nginx.start()

    yield start
    for nginx in started:
        nginx.stop()


def test_nginx_outwaits_the_ping_cycle_of_a_websocket() -> None:
    """A live connection may be quiet for a ping interval plus a ping timeout: nginx must not cut it sooner."""
    block = site_location("/socket.io/")
    config = Config.from_env({"GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0", "GATEWAY_JWT_SECRET": SECRET})
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = site_directives(directive, block)
        assert seconds(value) > config.ping_interval + config.ping_timeout, directive


def test_nginx_logs_paths_and_never_query_strings() -> None:
    """Tokens may come in the query string: every server logs with a format that has the path alone."""
    site = NGINX_SITE.read_text()
    formats = re.findall(r"^log_format (\S+) (.*?);\n", site, re.MULTILINE | re.DOTALL)
    assert [name for name, _ in formats] == ["push_gateway"]
    logged = set(re.findall(r"\$(\w+)", re.sub(r"#.*", "", formats[0][1])))
    assert "uri" in logged and {"remote_addr", "status", "request_time", "upstream_addr", "http_user_agent"} <= logged
    assert not logged & QUERY_VARIABLES and not any(name.startswith("arg_") for name in logged), logged
    # Each server block says where and how it logs, so nginx.conf's http-level access_log (combined) never applies.
    servers = len(re.findall(r"^server \{", site, re.MULTILINE))
    assert [line.split()[1:] for line in site_directives("access_log")] == [["push_gateway"]] * servers


def test_nginx_limits_each_address_and_lets_only_named_hosts_read_metrics() -> None:
    block = site_location("/socket.io/")
    (connections,) = site_directives("limit_conn", block)
    (handshakes,) = site_directives("limit_req", block)
    burst = re.fullmatch(r"zone=\S+ burst=(\d+) nodelay", handshakes)
    assert burst, handshakes
    # Every client behind one address (up to the connection cap) can reconnect at once after a machine stops.
    assert int(burst[1]) >= int(connections.split()[1])
    assert site_directives("limit_conn_status", block) == site_directives("limit_req_status", block) == ["429"]
    allowed = site_directives("allow", site_location("= /metrics"))
    assert {"127.0.0.1", "::1"} <= set(allowed)
    assert [address for address in allowed if ipaddress.ip_network(address).num_addresses != 1] == []
    assert site_directives("deny", site_location("= /metrics")) == ["all"]


@needs_nginx
def test_nginx_accepts_the_site_config(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
    result = nginx.test()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "test is successful" in output
    assert not re.search(r"\[(warn|emerg|alert|crit|error)\]", output), output


@needs_nginx
def test_nginx_passes_probes_keeps_metrics_private_and_checks_origins(
    start_gateway: StartGateway, start_nginx: Callable[[list[GatewayProcess]], Nginx]
) -> None:
    gateway = start_gateway()
    nginx = start_nginx([gateway])
    assert nginx.get("/healthz").json() == {"status": "ok"}
    assert nginx.get("/readyz").json() == {"status": "ready"}
    assert nginx.get("/anything-else").status_code == 404
    metrics = nginx.get("/metrics")
    assert metrics.status_code == 200 and "gateway_" in metrics.text
    # 127.0.0.2 is this machine too, but not an address the site lets read /metrics.
    assert nginx.status_from("127.0.0.2", "/metrics") == 403
    assert nginx.status_from("127.0.0.2", "/healthz") == 200
    # A page of the same origin connects: the client sends Origin: <nginx url>, and the gateway's same-origin
    # check passes only because nginx hands on Host (port included) and X-Forwarded-Proto (https) ...
    user = unique_user()
    client = nginx.client(gateway.token(user), user=user).connect()
    assert client.subscribe("balance")["topics"]["balance"]["seq"] == 0
    client.close()
    # ... and a page of another origin does not (the WebSocket is upgraded, then closed without an Engine.IO
    # open packet, which python-engineio reports as a ValueError).
    stranger = nginx.client(gateway.token(user), user=user, websocket_extra_options={"origin": "https://elsewhere.example"})
    with pytest.raises((socketio.exceptions.ConnectionError, ValueError)):
        stranger.connect()
    assert not stranger.sio.connected
    # A client's mistake: counted, and kept out of the error log.
    refused = 'gateway_connect_refused_total{reason="bad_origin"} 1.0'
    wait_for(lambda: refused in gateway.http("/metrics").text, 5, "the refused origin counted")
    assert unclean_lines(gateway.log()) == []


@needs_nginx
def test_nginx_sends_plain_http_to_https_and_tells_browsers_to_stay_there(
    start_gateway: StartGateway, start_nginx: Callable[[list[GatewayProcess]], Nginx]
) -> None:
    nginx = start_nginx([start_gateway()])
    # Every plain request, a ws:// handshake included, is sent to the same path and query over https.
    for path, headers in [(HANDSHAKE, UPGRADE), (HANDSHAKE, {}), ("/healthz", {}), ("/metrics", {}), ("/", {})]:
        response = requests.get(nginx.plain_url + path, headers=headers, allow_redirects=False, timeout=5)
        assert (response.status_code, response.headers["Location"]) == (301, "https://127.0.0.1" + path), path
        assert "Strict-Transport-Security" not in response.headers  # meaningless, and ignored, over http
    # Every https answer, errors included, carries HSTS for at least a year.
    for path, status in [("/healthz", 200), ("/anything-else", 404)]:
        response = nginx.get(path)
        assert response.status_code == status
        max_age = re.fullmatch(r"max-age=(\d+)", response.headers["Strict-Transport-Security"])
        assert max_age and int(max_age[1]) >= 365 * 24 * 3600, response.headers["Strict-Transport-Security"]
    # TLS 1.2 and 1.3 both serve.
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cafile=str(nginx.ca))
        context.minimum_version = context.maximum_version = version
        with (socket.create_connection(("127.0.0.1", nginx.port), timeout=5) as raw,
              context.wrap_socket(raw, server_hostname="127.0.0.1") as sock):
            assert sock.version() == version.name.replace("v1_", "v1.")


@needs_nginx
def test_nginx_keeps_query_string_tokens_out_of_its_logs(
    start_gateway: StartGateway, start_nginx: Callable[[list[GatewayProcess]], Nginx]
) -> None:
    gateway = start_gateway()
    nginx = start_nginx([gateway])
    user = unique_user()
    token = gateway.token(user)
    # A client that sends its token in the query string, as CONTRACT.md section 3 allows ...
    client = nginx.client(None, user=user, url=f"{nginx.url}?token={token}").connect()
    assert client.subscribe("balance")["topics"]["balance"]["seq"] == 0
    client.close()
    # ... and one that tries ws:// first and is redirected.
    plain = requests.get(f"{nginx.plain_url}{HANDSHAKE}&token={token}", allow_redirects=False, timeout=5)
    assert plain.status_code == 301

    def handshakes_logged() -> str:  # nginx writes a WebSocket's line when it closes
        text = nginx.access_log.read_text() if nginx.access_log.exists() else ""
        return text if text.count("/socket.io/") >= 2 else ""

    log = wait_for(handshakes_logged, 10, "both handshakes in the access log")
    assert token not in log and "token=" not in log and "EIO=" not in log
    # Each with the path, and what an operator needs: address, time, status, bytes, duration, gateway, client.
    websocket_line = r'^127\.0\.0\.1 \[\S+\] "GET /socket\.io/ HTTP/1\.1" 101 \d+ [\d.]+ upstream=127\.0\.0\.1:\d+ '
    assert re.search(websocket_line, log, re.MULTILINE), log
    assert re.search(r'"GET /socket\.io/ HTTP/1\.1" 301 \d+ [\d.]+ upstream=- .*"python-requests/', log), log
    # nginx.conf's own access_log, with the combined format, was not used by the site's servers.
    assert "/socket.io/" not in nginx.default_access_log.read_text()
    errors = nginx.errors()
    assert token not in errors, errors.replace(token, "<the token>")  # what nginx logged, for whoever reads this
    assert token not in gateway.log()


@needs_nginx
def test_nginx_refuses_handshakes_over_the_rate_of_one_address_only(
    start_gateway: StartGateway, start_nginx: Callable[[list[GatewayProcess]], Nginx]
) -> None:
    gateway = start_gateway()
    nginx = start_nginx([gateway])
    (handshakes,) = site_directives("limit_req", site_location("/socket.io/"))
    burst = int(handshakes.split("burst=")[1].split()[0])
    statuses: list[int] = []

    def refused() -> bool:  # one quick handshake from 127.0.0.2, closed as soon as it is answered
        statuses.append(nginx.status_from("127.0.0.2", HANDSHAKE, upgrade=True))
        return statuses[-1] == 429

    wait_for(refused, 30, "a 429 for 127.0.0.2 past its burst", interval=0)
    # The whole burst got through at once; only then were handshakes refused.
    assert len(statuses) > burst and 429 not in statuses[:burst], Counter(statuses)
    # Another address is not affected, and neither are the probes of the limited one.
    assert nginx.handshake(source="127.0.0.3") == (101, True)
    assert nginx.status_from("127.0.0.2", "/healthz") == 200
    assert unclean_lines(gateway.log()) == []


@needs_nginx
def test_nginx_sets_x_forwarded_host_itself(
    start_gateway: StartGateway, start_nginx: Callable[[list[GatewayProcess]], Nginx]
) -> None:
    """The gateway accepts the origin X-Forwarded-Proto://X-Forwarded-Host: a client's own header must not count."""
    gateway = start_gateway()
    nginx = start_nginx([gateway])
    forged = ["X-Forwarded-Host: evil.example"]
    assert nginx.handshake() == (101, True)  # a page of the site's own origin
    assert nginx.handshake(header=forged) == (101, True)  # a forged header changes nothing for it ...
    for origin in ("https://evil.example", "http://evil.example"):  # ... and opens nothing for another origin
        status, opened = nginx.handshake(origin=origin, header=forged)
        # Refused: a 400, or (gevent-websocket upgrades before the application answers) an upgrade that closes
        # without Engine.IO's open packet.
        assert status in (101, 400) and not opened, origin
    assert unclean_lines(gateway.log()) == []


# --- two gateways behind nginx ---------------------------------------------------------------------------------------


def pid_of(worker_id: str) -> int:
    return int(worker_id.split(":")[-2])


def placement(registry: Registry, gateways: list[GatewayProcess]) -> list[dict[str, set[str]]]:
    """For each gateway: its workers that hold records, with the users they hold."""
    pids = [set(gateway.worker_pids()) for gateway in gateways]
    placed: list[dict[str, set[str]]] = [{} for _ in gateways]
    for worker in registry.owners():
        for index, owned in enumerate(pids):
            if pid_of(worker) in owned:
                placed[index][worker] = set(registry.connections(worker).values())
    return placed


def users_of(placed: dict[str, set[str]]) -> set[str]:
    return set().union(*placed.values())


class Crowd:
    """Reconnecting clients of several users, all through nginx, each counting its connects."""

    def __init__(self, nginx: Nginx, gateway: GatewayProcess) -> None:
        self.nginx, self.gateway = nginx, gateway
        self.clients: dict[str, Client] = {}
        self.connects: Counter[str] = Counter()

    def join(self, topic: str) -> None:
        user = unique_user()
        client = self.nginx.client(self.gateway.token(user), user=user, reconnection=True,
                                   reconnection_delay=0.5, reconnection_delay_max=1.0)
        client.sio.on("connect", lambda: self.connects.update([user]))
        self.clients[user] = client.connect()  # with Origin: <nginx url>, as a page of the same origin would
        client.subscribe(topic)

    def spread_over(self, gateways: list[GatewayProcess], registry: Registry) -> list[set[str]]:
        """Add clients until every gateway holds some (bounded); return the users each holds."""
        while len(self.clients) < MIN_CLIENTS or not all(placement(registry, gateways)):
            assert len(self.clients) < MAX_CLIENTS, f"nginx sent all {len(self.clients)} clients to one gateway"
            self.join("balance")
        return [users_of(placed) for placed in placement(registry, gateways)]

    def reconnected(self, users: set[str]) -> bool:
        return all(self.connects[user] == 2 and self.clients[user].sio.connected for user in users)

    def seqs(self, topic: str) -> dict[str, list[int]]:
        return {user: client.seqs(topic) for user, client in self.clients.items()}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@needs_nginx
def test_clients_move_through_nginx_to_the_other_gateway_when_one_stops(
    redis_server: RedisServer, prefix: str, tmp_path: Path, start_gateway: StartGateway,
    start_nginx: Callable[[list[GatewayProcess]], Nginx],
) -> None:
    # Both gateways run with gateway.env.example's settings, filled in for this machine.
    shipped = filled_in(redis_server.url, prefix, tmp_path / "run")
    settings = {name: shipped[name] for name in shipped if name.startswith("GATEWAY_") and name != "GATEWAY_BIND"}
    gateways = [
        start_gateway(**settings, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"run{index}")) for index in range(2)
    ]
    stopped, survivor = gateways
    crowd = Crowd(start_nginx(gateways), survivor)
    registry = Registry(redis.Redis.from_url(redis_server.url), prefix)
    try:
        moved, stayed = crowd.spread_over(gateways, registry)
        assert moved | stayed == set(crowd.clients)
        gone_workers = registry.owners() | set(registry.workers())
        gone_workers = {worker for worker in gone_workers if pid_of(worker) in stopped.worker_pids()}
        with Publisher(config=survivor.config) as publisher:
            for user in crowd.clients:
                assert publisher.publish(user, "balance", {"usd": "1"}) == 1
            wait_for(lambda: all(s == [1] for s in crowd.seqs("balance").values()), 10, "every first update")

            assert stopped.stop(signal.SIGTERM) == 0
            wait_for(lambda: crowd.reconnected(moved), 20, "the stopped gateway's clients back through nginx")
            for user in moved:  # what a client does after a reconnect: subscribe again, saying what it holds
                ack = crowd.clients[user].call("subscribe", {"topics": ["balance"], "since": {"balance": 1}})
                assert ack["ok"] and ack["topics"]["balance"]["seq"] == 1, ack
            for user in crowd.clients:
                assert publisher.publish(user, "balance", {"usd": "2"}) == 2
            wait_for(lambda: all(s[-1:] == [2] for s in crowd.seqs("balance").values()), 10, "the update after")
        assert crowd.seqs("balance") == {user: [1, 2] for user in crowd.clients}
        assert all(crowd.connects[user] == 1 for user in stayed), "clients of the other gateway were disturbed"

        # The registry is true: every live user, on the surviving gateway's workers only.
        wait_for(lambda: registry.subscribers("balance") == set(crowd.clients), 5, "every live user subscribed")
        assert gone_workers and not gone_workers & (registry.owners() | set(registry.workers()))
        assert {pid_of(worker) for worker in registry.owners()} <= set(survivor.worker_pids())
        # The sweep unit as installed finds nothing left. Its environment file names the gateway's
        # RuntimeDirectory, which the sweep cannot write (here: absent).
        values = filled_in(redis_server.url, prefix, tmp_path / "the-gateways-runtime-directory")
        sweep = run_as_service(unit_text(SWEEP_UNIT), "ExecStart", values, tmp_path)
        assert sweep.returncode == 0, sweep.stderr
        assert sweep.stdout.strip().splitlines() == ["swept 0 dead workers"]

        crowd.close()
        wait_for(lambda: registry.subscribers("balance") == set(), 5, "records of closed clients removed")
        assert connection_keys(registry.redis, prefix) <= {f"{prefix}:workers"}
    finally:  # a failed assertion must not leave clients reconnecting in the background
        crowd.close()
        registry.redis.close()
    assert unclean_lines(stopped.log()) == [] and unclean_lines(survivor.log()) == []
    assert not re.search(r"\[(emerg|alert|crit)\]", crowd.nginx.errors()), crowd.nginx.errors()
