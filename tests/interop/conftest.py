"""Fixtures for the interop suite: a real `dps serve` process per test module.

Every test module gets its own server on its own loopback address 127.0.0.X
with a fresh data directory (module-scoped ``dps_server``). The server listens
on the standard ports (MQTT/TLS 8883, HTTPS 443), which the official Azure SDKs
hard-code, so distinct loopback addresses are what let servers coexist.

Environment:
    DPS_BIN              path of the dps binary (default <repo>/target/debug/dps,
                         or $CARGO_TARGET_DIR/debug/dps)
    DPS_START_TIMEOUT    seconds to wait for the listeners (default 30)
    DPS_KEEP_DATA=1      keep the temp data/log directories after the run
    DPS_TEST_HOST_BASE   first X of 127.0.0.X to try (default 20)
    DPS_TEST_HOST_PREFIX the first three octets instead of 127.0.0 (e.g. 127.0.9), so runs
                         sharing a machine can keep to separate address ranges
    DPS_INTEROP_SKIP_IF_NO_BIN=1
                         skip (instead of fail) when the binary does not exist; a stopgap
                         for before `dps` has a bin target, never for normal runs
    RUST_LOG             passed through to the server (default "info")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MQTT_PORT = 8883
HTTPS_PORT = 443
AMQP_PORT = 5671
REQUIRED_INFO_KEYS = (
    "idScope",
    "provisioningHost",
    "serviceConnectionString",
    "hubHostName",
    "hubConnectionString",
    "caCertificatePath",
)
LOG_TAIL_CHARS = 6000


# --------------------------------------------------------------------------------------
# Server process handling
# --------------------------------------------------------------------------------------


def dps_bin() -> Path:
    if os.environ.get("DPS_BIN"):
        return Path(os.environ["DPS_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
    return (target if target.is_absolute() else REPO_ROOT / target) / "debug" / "dps"


def _tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:  # pragma: no cover - diagnostics only
        return f"<cannot read {path}: {exc}>"
    text = data[-limit:].decode("utf-8", errors="replace")
    return ("...\n" if len(data) > limit else "") + text


@dataclass
class DpsServer:
    """A running `dps serve` process plus the data `dps info --json` reported."""

    host: str
    base_dir: Path
    data_dir: Path
    process: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    info: Dict[str, Any] = field(default_factory=dict)
    ca_path: str = ""
    ca_pem: str = ""
    # The command line and environment it was started with (for restart()).
    command: list = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)

    # Convenience accessors for the `dps info` fields used everywhere.
    @property
    def id_scope(self) -> str:
        return self.info["idScope"]

    @property
    def provisioning_host(self) -> str:
        return self.info["provisioningHost"]

    @property
    def hub_host(self) -> str:
        return self.info["hubHostName"]

    @property
    def service_connection_string(self) -> str:
        return self.info["serviceConnectionString"]

    @property
    def hub_connection_string(self) -> str:
        return self.info["hubConnectionString"]

    @property
    def service_host(self) -> str:
        """HostName= of the DPS service connection string (the service API host)."""
        return parse_connection_string(self.service_connection_string)["HostName"]

    @property
    def service_key(self) -> str:
        return parse_connection_string(self.service_connection_string)["SharedAccessKey"]

    @property
    def service_policy(self) -> str:
        return parse_connection_string(self.service_connection_string)["SharedAccessKeyName"]

    def cli(self, *args: str) -> Dict[str, Any]:
        """Runs `dps <args> --data-dir <this server's> --json` and returns its JSON output;
        fails the test with the output when the command fails."""
        res = subprocess.run(
            [str(dps_bin()), *args, "--data-dir", str(self.data_dir), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, f"dps {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        return json.loads(res.stdout) if res.stdout.strip() else {}

    def logs(self, limit: int = LOG_TAIL_CHARS) -> str:
        return (
            f"--- dps serve on {self.host} (pid {self.process.pid}, "
            f"exit code {self.process.poll()}) ---\n"
            f"--- stdout tail ({self.stdout_path}) ---\n{_tail(self.stdout_path, limit)}\n"
            f"--- stderr tail ({self.stderr_path}) ---\n{_tail(self.stderr_path, limit)}"
        )

    def kill9(self) -> None:
        """Kills the server as a crash would (SIGKILL: nothing flushed, nothing closed)."""
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Starts the server again on the same address and data directory, and waits for it."""
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env, cwd=str(self.base_dir)
            )
        _wait_ready(self, float(os.environ.get("DPS_START_TIMEOUT", "30")))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def parse_connection_string(cs: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for part in cs.split(";"):
        if part.strip():
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


_RUNNING: List[DpsServer] = []
_host_lock = threading.Lock()
_next_host_index = 0


def _worker_offset() -> int:
    """Per-process offset so pytest-xdist workers never pick the same addresses."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    digits = "".join(ch for ch in worker if ch.isdigit())
    return int(digits) * 40 if digits else 0


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def allocate_host() -> str:
    """Next 127.0.0.X (X from a counter) whose ports 8883, 443 and 5671 are all free."""
    global _next_host_index
    base = int(os.environ.get("DPS_TEST_HOST_BASE", "20")) + _worker_offset()
    with _host_lock:
        for _ in range(230):
            x = 2 + (base - 2 + _next_host_index) % 252  # stay within 127.0.0.2 .. 127.0.0.253
            _next_host_index += 1
            host = f"{os.environ.get('DPS_TEST_HOST_PREFIX', '127.0.0')}.{x}"
            if all(_port_free(host, p) for p in (MQTT_PORT, HTTPS_PORT, AMQP_PORT)):
                return host
    raise RuntimeError("no free 127.0.0.X address with ports 8883, 443 and 5671 available")


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_server(*extra_args: str, host: Optional[str] = None, hostnames: Optional[List[str]] = None) -> DpsServer:
    """Starts `dps serve` on a fresh 127.0.0.X (or `host`) with `extra_args` appended to its
    command line. Its `--hostname` values are its address, or `hostnames` (several nodes of one
    service are started with the same list, in the same order)."""
    binary = dps_bin()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        if os.environ.get("DPS_INTEROP_SKIP_IF_NO_BIN") == "1":
            pytest.skip(f"dps binary not found at {binary} (DPS_INTEROP_SKIP_IF_NO_BIN=1)")
        pytest.fail(
            f"dps binary not found at {binary}: run `cargo build --workspace` or set DPS_BIN",
            pytrace=False,
        )
    host = host or allocate_host()
    base_dir = Path(tempfile.mkdtemp(prefix=f"dps-interop-{host.rsplit('.', 1)[1]}-"))
    data_dir = base_dir / "data"
    data_dir.mkdir()
    stdout_path = base_dir / "stdout.log"
    stderr_path = base_dir / "stderr.log"
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env.setdefault("RUST_BACKTRACE", "1")
    names = [arg for name in (hostnames or [host]) for arg in ("--hostname", name)]
    command = [str(binary), "serve", "--data-dir", str(data_dir), "--bind", host, *names, *extra_args]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=str(base_dir),
        )
    server = DpsServer(
        host=host,
        base_dir=base_dir,
        data_dir=data_dir,
        process=proc,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        command=command,
        env=env,
    )
    try:
        _wait_ready(server, float(os.environ.get("DPS_START_TIMEOUT", "30")))
        server.info = _read_info(binary, data_dir, base_dir)
        ca_path = Path(server.info["caCertificatePath"])
        if not ca_path.is_absolute():
            ca_path = (data_dir / ca_path) if (data_dir / ca_path).exists() else (base_dir / ca_path)
        server.ca_path = str(ca_path)
        server.ca_pem = ca_path.read_text()
        assert "BEGIN CERTIFICATE" in server.ca_pem, f"{ca_path} is not a PEM certificate"
    except pytest.fail.Exception:
        server.stop()  # the failure message already carries what is needed
        raise
    except BaseException:
        logs = server.logs()
        server.stop()
        print(logs)
        raise
    _register_ca(server.ca_pem)
    return server


def _wait_ready(server: DpsServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = {MQTT_PORT, HTTPS_PORT, AMQP_PORT}
    while True:
        code = server.process.poll()
        if code is not None:
            pytest.fail(
                f"`dps serve` exited early with code {code}\n{server.logs()}", pytrace=False
            )
        pending = {p for p in pending if not _accepts(server.host, p)}
        if not pending:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"`dps serve` on {server.host} did not accept connections on ports "
                f"{sorted(pending)} within {timeout:.0f}s\n{server.logs()}",
                pytrace=False,
            )
        time.sleep(0.1)


def _read_info(binary: Path, data_dir: Path, cwd: Path) -> Dict[str, Any]:
    res = subprocess.run(
        [str(binary), "info", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(cwd),
    )
    if res.returncode != 0:
        pytest.fail(
            f"`dps info --json` failed with code {res.returncode}\nstdout:\n{res.stdout}\n"
            f"stderr:\n{res.stderr}",
            pytrace=False,
        )
    try:
        info = json.loads(res.stdout)
    except ValueError as exc:
        pytest.fail(f"`dps info --json` printed invalid JSON ({exc}):\n{res.stdout}", pytrace=False)
    missing = [k for k in REQUIRED_INFO_KEYS if not info.get(k)]
    if missing:
        pytest.fail(f"`dps info --json` lacks {missing}: {info}", pytrace=False)
    return info


# `requests` (used by azure-iot-hub's msrest client and by the raw HTTP tests) reads
# REQUESTS_CA_BUNDLE. Servers started in this process each have their own CA, so the
# variable points at a bundle that accumulates every CA seen so far.
_ca_bundle_path: Optional[Path] = None
_ca_bundle_lock = threading.Lock()


def _register_ca(pem: str) -> None:
    global _ca_bundle_path
    with _ca_bundle_lock:
        if _ca_bundle_path is None:
            fd, name = tempfile.mkstemp(prefix="dps-interop-ca-", suffix=".pem")
            os.close(fd)
            _ca_bundle_path = Path(name)
        with open(_ca_bundle_path, "a") as f:
            f.write(pem.strip() + "\n")
        os.environ["REQUESTS_CA_BUNDLE"] = str(_ca_bundle_path)


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(*extra_args: str, **where: Any) -> Iterator[DpsServer]:
    """A `dps serve` started with `extra_args` (and `host`, `hostnames`: see `start_server`) for
    a fixture of its own: its logs are printed if the test run fails, and it must not have
    panicked when it is stopped."""
    server = start_server(*extra_args, **where)
    _RUNNING.append(server)
    try:
        yield server
    finally:
        _RUNNING.remove(server)
        logs = server.logs()
        server.stop()
        assert "panicked at" not in logs, logs


@pytest.fixture(scope="module")
def dps_server(request):
    """A fresh `dps serve` on its own 127.0.0.X for the whole test module.

    A module may set ``DPS_SERVE_ARGS = [...]`` to add `dps serve` flags.

    Yields a :class:`DpsServer` with ``host``, ``info`` (the `dps info --json` object),
    ``ca_path`` / ``ca_pem`` (the local CA), ``id_scope``, ``provisioning_host``,
    ``hub_host``, ``service_connection_string``, ``hub_connection_string`` and ``logs()``.
    """
    server = start_server(*getattr(request.module, "DPS_SERVE_ARGS", ()))
    _RUNNING.append(server)
    try:
        yield server
    finally:
        _RUNNING.remove(server)
        crashed = server.process.poll()
        logs = server.logs()
        server.stop()
        panicked = "panicked at" in _tail(server.stderr_path, 10**7)
        if os.environ.get("DPS_KEEP_DATA") != "1" and crashed is None and not panicked:
            shutil.rmtree(server.base_dir, ignore_errors=True)
        if crashed is not None:
            pytest.fail(f"`dps serve` died during the module (exit code {crashed})\n{logs}", pytrace=False)
        if panicked:
            pytest.fail(f"`dps serve` logged a panic\n{logs}", pytrace=False)


@pytest.fixture(scope="module")
def service_client(dps_server):
    """azure-iot-deviceprovisioning DeviceProvisioningClient for the module's server."""
    from azure.iot.deviceprovisioning import DeviceProvisioningClient

    client = DeviceProvisioningClient.from_connection_string(
        dps_server.service_connection_string,
        connection_verify=dps_server.ca_path,  # azure-core RequestsTransport option
        retry_total=1,  # fail fast instead of azure-core's 10 retries with backoff
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def registry_manager(dps_server):
    """azure-iot-hub IoTHubRegistryManager (REST via msrest/requests, CA via REQUESTS_CA_BUNDLE)."""
    from azure.iot.hub import IoTHubRegistryManager

    assert os.environ.get("REQUESTS_CA_BUNDLE"), "CA bundle not registered"
    return IoTHubRegistryManager.from_connection_string(dps_server.hub_connection_string)


# --------------------------------------------------------------------------------------
# Attach the server log tail to failing test reports
# --------------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _RUNNING:
        for server in list(_RUNNING):
            report.sections.append((f"dps server log ({server.host})", server.logs()))


def pytest_sessionfinish(session, exitstatus):
    if _ca_bundle_path is not None and os.environ.get("DPS_KEEP_DATA") != "1":
        try:
            _ca_bundle_path.unlink()
        except OSError:
            pass
