"""Rejections: wrong keys, expired/malformed SAS tokens, unknown scope, bad JSON.

The Python device SDK only speaks MQTT and builds its own SAS, so expiry, malformed tokens
and bad bodies are exercised over the HTTPS device API with hand-made requests:
    PUT https://{host}/{idScope}/registrations/{regId}/register?api-version=2021-06-01
Each negative case is paired with a positive control built by the same helper, so a 401
really means the server rejected the token, not that the test's SAS code is wrong.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from interop_util import (
    DEVICE_API_VERSION,
    SERVICE_API_VERSION,
    assert_registered,
    assert_refused_at_connect,
    assert_registration_fails,
    device_sas,
    error_body,
    random_key,
    register_device,
    service_sas,
    unique_id,
)

HTTP_TIMEOUT = 15


@pytest.fixture(scope="module")
def enrolled(service_client):
    """An individual symmetric-key enrollment: (registration_id, primary_key)."""
    rid = unique_id("bad")
    key = random_key()
    service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()},
            },
        },
    )
    return rid, key


def _register_url(server, rid, scope=None):
    return (
        f"https://{server.provisioning_host}/{scope or server.id_scope}/registrations/{rid}/register"
        f"?api-version={DEVICE_API_VERSION}"
    )


def _put_register(server, rid, auth=None, body=None, scope=None, raw_body=None):
    headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    data = raw_body if raw_body is not None else json.dumps(body or {"registrationId": rid})
    return requests.put(
        _register_url(server, rid, scope),
        data=data,
        headers=headers,
        verify=server.ca_path,
        timeout=HTTP_TIMEOUT,
    )


def _assert_error(resp, status, code=None):
    assert resp.status_code == status, f"HTTP {resp.status_code}: {resp.text!r}"
    body = error_body(resp)
    assert isinstance(body.get("errorCode"), int), body
    assert body["errorCode"] // 1000 == status, body
    if code is not None:
        assert body["errorCode"] == code, body
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


# --------------------------------------------------------------------------------------
# device SDK
# --------------------------------------------------------------------------------------


def test_device_sdk_wrong_key_fails(dps_server, enrolled):
    rid, key = enrolled
    # positive control first: the MQTT/TLS path works with the right key
    assert_registered(register_device(dps_server, rid, key), dps_server, rid)
    # as with Azure, the CONNECT itself is refused (CONNACK 5): the SDK raises CredentialError
    assert_refused_at_connect(assert_registration_fails(dps_server, rid, random_key()))
    assert_refused_at_connect(assert_registration_fails(dps_server, unique_id("not-enrolled"), random_key()))


# --------------------------------------------------------------------------------------
# device HTTPS API: positive control over the SAS variants each SDK sends
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sr_encoding,policy",
    [("upper", None), ("upper", "registration"), ("raw", "registration"), ("lower", "registration")],
    ids=["python-no-skn", "csharp", "node-raw-sr", "c-lowercase-hex"],
)
def test_https_register_accepts_valid_sas_variants(dps_server, enrolled, sr_encoding, policy):
    rid, key = enrolled
    auth = device_sas(dps_server.id_scope, rid, key, sr_encoding=sr_encoding, policy=policy)
    resp = _put_register(dps_server, rid, auth)
    assert resp.status_code == 202, f"HTTP {resp.status_code}: {resp.text!r}"
    assert "application/json" in resp.headers.get("Content-Type", "")
    op = resp.json()
    assert op.get("operationId"), op
    assert op.get("status") in ("assigning", "assigned"), op

    # poll the operation until it completes (bounded)
    url = (
        f"https://{dps_server.provisioning_host}/{dps_server.id_scope}/registrations/{rid}"
        f"/operations/{op['operationId']}?api-version={DEVICE_API_VERSION}"
    )
    deadline = time.monotonic() + 15
    while True:
        poll = requests.get(
            url, headers={"Authorization": auth}, verify=dps_server.ca_path, timeout=HTTP_TIMEOUT
        )
        assert poll.status_code in (200, 202), f"HTTP {poll.status_code}: {poll.text!r}"
        status = poll.json()
        if poll.status_code == 200:
            break
        assert status.get("status") == "assigning", status
        assert time.monotonic() < deadline, "registration did not complete in 15s"
        time.sleep(min(float(poll.headers.get("retry-after", "1")), 1.0))
    assert status["status"] == "assigned", status
    state = status["registrationState"]
    assert state["registrationId"] == rid
    assert state["assignedHub"] == dps_server.hub_host
    assert state["deviceId"] == rid


# --------------------------------------------------------------------------------------
# device HTTPS API: rejections
# --------------------------------------------------------------------------------------


def test_https_register_wrong_key_401(dps_server, enrolled):
    rid, _ = enrolled
    resp = _put_register(dps_server, rid, device_sas(dps_server.id_scope, rid, random_key()))
    _assert_error(resp, 401, 401000)


def test_https_register_expired_sas_401(dps_server, enrolled):
    rid, key = enrolled
    expired = device_sas(dps_server.id_scope, rid, key, expiry=int(time.time()) - 3600)
    body = _assert_error(_put_register(dps_server, rid, expired), 401, 401000)
    assert "expir" in body["message"].lower(), body


@pytest.mark.parametrize(
    "auth",
    [
        "SharedAccessSignature garbage",
        "SharedAccessSignature sr=&sig=&se=",
        "Bearer abc.def.ghi",
        "SharedAccessSignature sr=x%2Fregistrations%2Fy&sig=AAAA&se=not-a-number",
        "",
    ],
    ids=["garbage", "empty-fields", "bearer", "non-numeric-se", "empty-header"],
)
def test_https_register_malformed_sas_401(dps_server, enrolled, auth):
    rid, _ = enrolled
    _assert_error(_put_register(dps_server, rid, auth), 401, 401000)


def test_https_register_missing_authorization_401(dps_server, enrolled):
    rid, _ = enrolled
    _assert_error(_put_register(dps_server, rid, auth=None), 401)


def test_https_register_sas_for_other_registration_401(dps_server, enrolled):
    rid, key = enrolled
    # correctly signed with the right key, but for a different audience
    token = device_sas(dps_server.id_scope, unique_id("other"), key)
    _assert_error(_put_register(dps_server, rid, token), 401, 401000)


def test_https_register_unknown_scope(dps_server, enrolled):
    rid, key = enrolled
    scope = "0ne00000000"
    assert scope != dps_server.id_scope
    resp = _put_register(dps_server, rid, device_sas(scope, rid, key), scope=scope)
    assert resp.status_code in (401, 404), f"HTTP {resp.status_code}: {resp.text!r}"
    _assert_error(resp, resp.status_code)


def test_https_register_malformed_json_400(dps_server, enrolled):
    rid, key = enrolled
    resp = _put_register(dps_server, rid, device_sas(dps_server.id_scope, rid, key), raw_body='{"registrationId": ')
    _assert_error(resp, 400, 400004)


# --------------------------------------------------------------------------------------
# service REST API authentication
# --------------------------------------------------------------------------------------


def _service_get(server, path, auth=None):
    headers = {"Accept": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    return requests.get(
        f"https://{server.service_host}{path}?api-version={SERVICE_API_VERSION}",
        headers=headers,
        verify=server.ca_path,
        timeout=HTTP_TIMEOUT,
    )


def test_service_api_valid_sas_control(dps_server, enrolled):
    rid, _ = enrolled
    auth = service_sas(dps_server.service_host, dps_server.service_key, dps_server.service_policy)
    resp = _service_get(dps_server, f"/enrollments/{rid}", auth)
    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text!r}"
    assert resp.json()["registrationId"] == rid


def test_service_api_without_authorization_401(dps_server, enrolled):
    rid, _ = enrolled
    _assert_error(_service_get(dps_server, f"/enrollments/{rid}"), 401)


def test_service_api_wrong_key_401(dps_server, enrolled):
    rid, _ = enrolled
    auth = service_sas(dps_server.service_host, random_key(), dps_server.service_policy)
    _assert_error(_service_get(dps_server, f"/enrollments/{rid}", auth), 401)


def test_service_api_expired_sas_401(dps_server, enrolled):
    rid, _ = enrolled
    auth = service_sas(
        dps_server.service_host,
        dps_server.service_key,
        dps_server.service_policy,
        expiry=int(time.time()) - 3600,
    )
    _assert_error(_service_get(dps_server, f"/enrollments/{rid}", auth), 401)


def test_service_api_unknown_policy_401(dps_server, enrolled):
    rid, _ = enrolled
    auth = service_sas(dps_server.service_host, dps_server.service_key, "nosuchpolicy")
    _assert_error(_service_get(dps_server, f"/enrollments/{rid}", auth), 401)


def test_service_api_device_key_is_not_a_service_key(dps_server, enrolled):
    rid, key = enrolled
    auth = service_sas(dps_server.service_host, key, dps_server.service_policy)
    _assert_error(_service_get(dps_server, f"/enrollments/{rid}", auth), 401)
