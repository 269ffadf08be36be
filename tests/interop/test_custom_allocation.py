"""Custom allocation with a real webhook: an HTTPS server in this test (its own CA, trusted by
`dps serve --allocation-webhook-ca`, a `?code=` function key as Azure Functions take one) that
speaks Azure's `AllocationRequest`/`AllocationResponse`: it chooses the hub from the device's
payload, sets an initial twin and returns a payload to the device.

- The official Python device SDK sends `provisioning_payload` and reads the webhook's payload
  from `registration_state.response_payload`; the Node SDK (AMQP) does the same with
  `setProvisioningPayload`. The device then reads the webhook's desired properties from its
  twin.
- Failures: the webhook answers 500, names a hub it was not offered, refuses the function key,
  or is down: the registration fails (400208) with a message saying which, and the request the
  webhook saw never holds the function key or the device's keys.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import allocate_host, running_server
from interop_util import (
    call_with_timeout,
    hub_device_client,
    issue_server_certificate,
    random_key,
    register_device,
    register_over_https,
    run_node,
    unique_id,
)

FUNCTION_KEY = "k-" + random_key(12).replace("/", "_").replace("+", "-")
PORT = 8443


class Webhook(BaseHTTPRequestHandler):
    """Answers by the device's payload: `{"mode": …}` picks the answer; records each request."""

    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length))
        if parse_qs(urlparse(self.path).query).get("code") != [FUNCTION_KEY]:
            return self._answer(401, {"error": "bad function key"})
        Webhook.requests.append(request)
        context = request["deviceRuntimeContext"]
        mode = (context.get("payload") or {}).get("mode", "ok")
        if mode == "fail":
            return self._answer(500, {"error": "the webhook broke"})
        if mode == "elsewhere":
            return self._answer(200, {"iotHubHostName": "elsewhere.example.test"})
        return self._answer(
            200,
            {
                "iotHubHostName": request["linkedHubs"][0],
                "initialTwin": {"tags": {"model": (context.get("payload") or {}).get("model")}, "properties": {"desired": {"darkness": "medium"}}},
                "payload": {"welcome": context["registrationId"]},
            },
        )

    def _answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    host = allocate_host()
    ca, cert, key = issue_server_certificate(host, tmp_path_factory.mktemp("webhook"))
    server = ThreadingHTTPServer((host, PORT), Webhook)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield types.SimpleNamespace(url=f"https://{host}:{PORT}/api/alloc", ca=ca, server=server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(webhook):
    with running_server("--allocation-webhook-ca", str(webhook.ca), "--webhook-timeout-secs", "3") as srv:
        yield srv


def _enroll(srv, webhook, rid: str, key: str, url: str | None = None) -> None:
    srv.cli(
        "enrollment", "create",
        "--registration-id", rid,
        "--primary-key", key,
        "--allocation-policy", "custom",
        "--webhook-url", url or f"{webhook.url}?code={FUNCTION_KEY}",
        "--api-version", "2021-10-01",
    )


def test_python_device_sends_and_gets_a_payload(server, webhook):
    rid, key = unique_id("ca-py"), random_key()
    _enroll(server, webhook, rid, key)
    result = register_device(server, rid, key, payload={"model": "toaster-9"})
    assert result.status == "assigned", result
    assert result.registration_state.assigned_hub == server.hub_host
    # The SDK hands the payload over as JSON text (its `response_payload` property dumps it).
    assert json.loads(result.registration_state.response_payload) == {"welcome": rid}, result

    seen = next(r for r in Webhook.requests if r["deviceRuntimeContext"]["registrationId"] == rid)
    assert seen["deviceRuntimeContext"]["payload"] == {"model": "toaster-9"}
    assert seen["deviceRuntimeContext"]["symmetricKey"] == {}
    assert seen["linkedHubs"] == [server.hub_host.lower()]
    enrollment = seen["individualEnrollment"]
    assert enrollment["customAllocationDefinition"]["webhookUrl"].endswith("/api/alloc?****")
    assert FUNCTION_KEY not in json.dumps(seen) and key not in json.dumps(seen)

    with hub_device_client(server, rid, key) as device:
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert twin["desired"]["darkness"] == "medium", twin


def test_node_device_sends_and_gets_a_payload(server, webhook):
    rid, key = unique_id("ca-node"), random_key()
    _enroll(server, webhook, rid, key)
    out = run_node(
        server,
        "provision.js",
        {
            "host": server.provisioning_host,
            "idScope": server.id_scope,
            "registrationId": rid,
            "transport": "Amqp",
            "symmetricKey": key,
            "payload": {"model": "kettle"},
        },
    )
    assert "error" not in out, out
    assert out["result"]["assignedHub"] == server.hub_host, out
    assert out["result"]["payload"] == {"welcome": rid}, out


@pytest.mark.parametrize(
    "mode,why",
    [
        ("fail", "answered 500 Internal Server Error"),
        ("elsewhere", "chose IoT hub 'elsewhere.example.test', which is not one of the hubs it was offered"),
    ],
)
def test_a_webhook_that_fails_fails_the_registration(server, webhook, mode, why):
    rid, key = unique_id("ca-bad"), random_key()
    _enroll(server, webhook, rid, key)
    op = register_over_https(server, rid, key, payload={"mode": mode})
    state = op["registrationState"]
    assert (op["status"], state["errorCode"]) == ("failed", 400208), op
    assert why in state["errorMessage"], op
    assert FUNCTION_KEY not in state["errorMessage"], op


def test_a_wrong_function_key_or_a_webhook_that_is_down(server, webhook):
    rid, key = unique_id("ca-key"), random_key()
    _enroll(server, webhook, rid, key, url=f"{webhook.url}?code=wrong")
    op = register_over_https(server, rid, key)
    assert op["status"] == "failed" and "answered 401 Unauthorized" in op["registrationState"]["errorMessage"], op

    rid, key = unique_id("ca-down"), random_key()
    down = f"https://{allocate_host()}:{PORT}/api/alloc?code={FUNCTION_KEY}"
    _enroll(server, webhook, rid, key, url=down)
    started = time.monotonic()
    op = register_over_https(server, rid, key)
    assert op["status"] == "failed" and "did not answer" in op["registrationState"]["errorMessage"], op
    assert time.monotonic() - started < 30, "the webhook deadline bounds the registration"
