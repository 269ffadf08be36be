"""Shared helpers for the interop tests (SAS tokens, keys, bounded waits, SDK wrappers)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import queue
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar
from urllib.parse import quote

T = TypeVar("T")

# Upper bound for a single SDK call that talks to the server (register, connect, twin ops).
SDK_CALL_TIMEOUT = float(os.environ.get("DPS_SDK_CALL_TIMEOUT", "45"))

DEVICE_API_VERSION = "2021-06-01"
SERVICE_API_VERSION = "2021-10-01"


# --------------------------------------------------------------------------------------
# ids, keys, SAS
# --------------------------------------------------------------------------------------


def unique_id(prefix: str) -> str:
    """A registration/group id that is valid for DPS (lower-case alnum and '-')."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def random_key(nbytes: int = 32) -> str:
    return base64.b64encode(os.urandom(nbytes)).decode()


def hmac_b64(key_b64: str, message: str) -> str:
    digest = hmac.new(base64.b64decode(key_b64), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def derive_device_key(group_key_b64: str, registration_id: str) -> str:
    """Enrollment-group device key: base64(HMAC-SHA256(base64decode(groupKey), registrationId))."""
    return hmac_b64(group_key_b64, registration_id)


def sas_token(
    resource: str,
    key_b64: str,
    *,
    expiry: Optional[int] = None,
    ttl: int = 3600,
    policy: Optional[str] = None,
    sr_encoding: str = "upper",
) -> str:
    """Build `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`.

    The signature covers the `sr` value exactly as written into the token.
    sr_encoding: "upper" -> quote(resource, safe="") (%2F, as Python/C# do),
                 "lower" -> same with lower-case hex (%2f, as the C SDK does),
                 "raw"   -> resource unencoded (as the Node SDK does).
    """
    se = int(time.time()) + ttl if expiry is None else int(expiry)
    if sr_encoding == "raw":
        sr = resource
    else:
        sr = quote(resource, safe="")
        if sr_encoding == "lower":
            sr = _lower_percent_hex(sr)
    sig = quote(hmac_b64(key_b64, f"{sr}\n{se}"), safe="")
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se={se}"
    if policy:
        token += f"&skn={policy}"
    return token


def _lower_percent_hex(s: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), s)


def device_sas(id_scope: str, registration_id: str, key_b64: str, **kw: Any) -> str:
    kw.setdefault("policy", "registration")
    return sas_token(f"{id_scope}/registrations/{registration_id}", key_b64, **kw)


def service_sas(host: str, key_b64: str, policy: str = "provisioningserviceowner", **kw: Any) -> str:
    return sas_token(host, key_b64, policy=policy, **kw)


# --------------------------------------------------------------------------------------
# bounded waits
# --------------------------------------------------------------------------------------


def call_with_timeout(fn: Callable[[], T], timeout: float = SDK_CALL_TIMEOUT, what: str = "") -> T:
    """Run a blocking SDK call in a daemon thread; raise TimeoutError if it hangs.

    The SDKs have long (or no) internal timeouts; this keeps a misbehaving server from
    stalling the suite. Exceptions raised by ``fn`` propagate unchanged.
    """
    result: "queue.Queue[tuple]" = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            result.put((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result.put((False, exc))

    t = threading.Thread(target=run, name=f"sdk-call-{what or 'op'}", daemon=True)
    t.start()
    try:
        ok, value = result.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"{what or 'SDK call'} did not finish within {timeout:.0f}s") from None
    if ok:
        return value
    raise value


# --------------------------------------------------------------------------------------
# azure-iot-device wrappers
# --------------------------------------------------------------------------------------


def fresh_postgres_database() -> str:
    """The URL of a new, empty database on the test PostgreSQL (`DPS_TEST_POSTGRES`, set by
    `scripts/test.sh` from its throwaway cluster; its user may create databases)."""
    admin = os.environ.get("DPS_TEST_POSTGRES")
    if not admin:
        raise RuntimeError(
            "DPS_TEST_POSTGRES is not set: run the tests through ./scripts/test.sh, which starts a "
            "throwaway PostgreSQL (scripts/pg-test-cluster.sh), or set it to a database URL whose "
            "user may create databases"
        )
    name = f"interop_{uuid.uuid4().hex}"
    subprocess.run(["psql", admin, "-q", "-c", f"CREATE DATABASE {name}"], check=True)
    return f"{admin.rsplit('/', 1)[0]}/{name}"


def register_device(
    server: Any, registration_id: str, key: str, *, websockets: bool = False, payload: Any = None
):
    """ProvisioningDeviceClient.create_from_symmetric_key(...).register() against `server`.

    ``websockets=True`` provisions over MQTT over WebSockets (443, ``/$iothub/websocket``)
    instead of MQTT over TLS (8883); ``payload`` is sent as the SDK's ``provisioning_payload``.
    """
    from azure.iot.device import ProvisioningDeviceClient

    prov = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.provisioning_host,
        registration_id=registration_id,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=server.ca_pem,
        websockets=websockets,
    )
    if payload is not None:
        prov.provisioning_payload = payload
    try:
        return call_with_timeout(prov.register, what=f"register({registration_id})")
    finally:
        _shutdown_provisioning_client(prov)


def register_device_x509(server: Any, registration_id: str, x509: Any, *, websockets: bool = False):
    """ProvisioningDeviceClient.create_from_x509_certificate(...).register() against `server`.

    ``x509`` is an ``azure.iot.device.X509`` (its cert file may hold leaf + intermediates);
    ``websockets`` as in :func:`register_device`.
    """
    from azure.iot.device import ProvisioningDeviceClient

    prov = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=server.provisioning_host,
        registration_id=registration_id,
        id_scope=server.id_scope,
        x509=x509,
        server_verification_cert=server.ca_pem,
        websockets=websockets,
    )
    try:
        return call_with_timeout(prov.register, what=f"register_x509({registration_id})")
    finally:
        _shutdown_provisioning_client(prov)


def _shutdown_provisioning_client(prov: Any) -> None:
    """Best effort: after a failed register() the SDK leaves its MQTT pipeline running."""
    try:
        from azure.iot.device.common.evented_callback import EventedCallback

        done = EventedCallback()
        prov._pipeline.shutdown(callback=done)  # noqa: SLF001 - no public API for this
        done.wait_for_completion(timeout=5)
    except Exception:  # noqa: BLE001 - already shut down after a successful register()
        pass


def assert_registered(result: Any, server: Any, device_id: str) -> None:
    assert result is not None, "register() returned None"
    assert result.status == "assigned", f"registration status {result.status!r}: {result}"
    state = result.registration_state
    assert state is not None, "assigned result without registration_state"
    assert state.assigned_hub == server.hub_host, (state.assigned_hub, server.hub_host)
    assert state.device_id == device_id, (state.device_id, device_id)


def assert_registration_fails(
    server: Any, registration_id: str, key: str, *, websockets: bool = False
) -> BaseException:
    """register() must be *rejected* by the server.

    Accepted outcomes: CredentialError (CONNACK 4/5 "not authorized"), ClientError wrapping
    the SDK's ServiceError (an error status such as 401 on the register response topic), or a
    result whose status is not "assigned". A dropped/refused connection or a timeout is not a
    rejection and fails the assertion. Returns the exception for extra checks.
    """
    return _expect_rejection(
        lambda: register_device(server, registration_id, key, websockets=websockets), registration_id
    )


def assert_refused_at_connect(exc: BaseException) -> None:
    """The SDK saw the service refuse its MQTT CONNECT (CONNACK 5, "not authorised"), which is how
    Azure DPS answers a credential it does not accept: register() raises CredentialError."""
    from azure.iot.device import exceptions as dev_exc

    seen = f"{exc!r} (cause: {exc.__cause__!r})"
    assert isinstance(exc, dev_exc.CredentialError), f"expected CredentialError, got {seen}"
    assert "not authori" in repr(exc.__cause__), seen


def assert_x509_registration_fails(server: Any, registration_id: str, x509: Any) -> BaseException:
    """Like :func:`assert_registration_fails`, for a device that presents a client certificate."""
    return _expect_rejection(lambda: register_device_x509(server, registration_id, x509), registration_id)


def _expect_rejection(register: Callable[[], Any], registration_id: str) -> BaseException:
    from azure.iot.device import exceptions as dev_exc

    try:
        result = register()
    except (dev_exc.ConnectionFailedError, dev_exc.ConnectionDroppedError, dev_exc.OperationTimeout) as exc:
        raise AssertionError(
            f"registration of {registration_id} was not rejected by the service: "
            f"{type(exc).__name__}: {exc} (cause: {exc.__cause__!r})"
        ) from exc
    except (dev_exc.ClientError, dev_exc.ServiceError) as exc:
        return exc
    assert result is None or result.status != "assigned", (
        f"registration of {registration_id} unexpectedly succeeded: {result}"
    )
    return AssertionError(f"registration returned status {getattr(result, 'status', None)}")


@contextlib.contextmanager
def hub_device_client(server: Any, device_id: str, key: str, *, websockets: bool = False) -> Iterator[Any]:
    """A connected IoTHubDeviceClient for `device_id` on the server's embedded hub.

    ``websockets=True`` connects with MQTT over WebSockets (443) instead of MQTT over TLS (8883).
    """
    from azure.iot.device import IoTHubDeviceClient

    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=server.hub_host,
        device_id=device_id,
        server_verification_cert=server.ca_pem,
        connection_retry=False,
        websockets=websockets,
    )
    with _connected(client, device_id) as c:
        yield c


@contextlib.contextmanager
def hub_device_client_x509(server: Any, device_id: str, x509: Any, *, websockets: bool = False) -> Iterator[Any]:
    """A connected IoTHubDeviceClient that authenticates with a client certificate
    (``websockets`` as in :func:`hub_device_client`)."""
    from azure.iot.device import IoTHubDeviceClient

    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509,
        hostname=server.hub_host,
        device_id=device_id,
        server_verification_cert=server.ca_pem,
        connection_retry=False,
        websockets=websockets,
    )
    with _connected(client, device_id) as c:
        yield c


@contextlib.contextmanager
def _connected(client: Any, device_id: str) -> Iterator[Any]:
    try:
        call_with_timeout(client.connect, what=f"hub connect({device_id})")
        yield client
    finally:
        try:
            call_with_timeout(client.shutdown, timeout=15, what="hub shutdown")
        except Exception:  # noqa: BLE001 - teardown must not mask the test result
            pass


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns a truthy value or `timeout` expires (returns last value)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def error_body(response: Any) -> Dict[str, Any]:
    """JSON error body of a `requests` response (asserting it is JSON)."""
    ctype = response.headers.get("Content-Type", "")
    assert "application/json" in ctype, f"error response content-type {ctype!r}: {response.text!r}"
    body = response.json()
    assert isinstance(body, dict), body
    return body


# --------------------------------------------------------------------------------------
# raw service REST (APIs the service SDK lacks, e.g. /certificates)
# --------------------------------------------------------------------------------------


def service_request(
    server: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    if_match: Optional[str] = None,
    timeout: float = 15,
) -> Any:
    """`method https://{service_host}{path}?api-version=...` with a service SAS (returns the response)."""
    import json

    import requests

    headers = {
        "Authorization": service_sas(server.service_host, server.service_key, server.service_policy),
        "Accept": "application/json",
    }
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json; charset=utf-8"
        data = json.dumps(body)
    if if_match is not None:
        headers["If-Match"] = if_match
    return requests.request(
        method,
        f"https://{server.service_host}{path}",
        params={"api-version": SERVICE_API_VERSION},
        data=data,
        headers=headers,
        verify=server.ca_path,
        timeout=timeout,
    )


NODE_DIR = Path(__file__).resolve().parent / "node"


def run_node(server: Any, script: str, args: Dict[str, Any]) -> Dict[str, Any]:
    """Runs a Node script of tests/interop/node with `args` (one JSON argument), trusting the
    server's CA, and returns the JSON object it printed last."""
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=server.ca_path)
    proc = subprocess.run(
        ["node", script, json.dumps(args)], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{script} printed no result (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def issue_server_certificate(host: str, out: Path) -> tuple[Path, Path, Path]:
    """A CA of its own and a server certificate for `host` (an IP address) issued by it, for
    stand-ins of services the server calls (a storage account, a webhook): (CA, certificate,
    key) files in `out`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azurite test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = out / "ca.pem", out / "cert.pem", out / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def register_over_https(
    server: Any, rid: str, key: str, payload: Any = None, source: Optional[str] = None
) -> Dict[str, Any]:
    """Registers a symmetric-key device over the device HTTPS API (with `payload`, if any; from
    the local address `source`, if given) and polls to the end; the final operation status,
    whose `registrationState` shows a failure's `errorCode` and `errorMessage` (the SDKs keep
    those to themselves)."""
    import http.client
    import ssl

    auth = device_sas(server.id_scope, rid, key)
    base = f"/{server.id_scope}/registrations/{rid}"
    context = ssl.create_default_context(cafile=server.ca_path)
    conn = http.client.HTTPSConnection(
        server.provisioning_host,
        443,
        context=context,
        timeout=60,
        source_address=(source, 0) if source else None,
    )

    def call(method: str, path: str, body: Any = None) -> Dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        conn.request(method, f"{path}?api-version={DEVICE_API_VERSION}", body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        assert resp.status in (200, 202), (resp.status, text)
        return json.loads(text)

    try:
        register = {"registrationId": rid, **({"payload": payload} if payload is not None else {})}
        op = call("PUT", f"{base}/register", register)
        deadline = time.monotonic() + 60
        while op.get("status") == "assigning":
            assert time.monotonic() < deadline, op
            time.sleep(0.5)
            op = call("GET", f"{base}/operations/{op['operationId']}")
        return op
    finally:
        conn.close()
