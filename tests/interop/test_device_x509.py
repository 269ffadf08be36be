"""X.509 attestation with the official `azure-iot-device` 2.14 SDK (and raw HTTPS for rejections).

Every certificate is made here with `cryptography`: a root CA, intermediates (basicConstraints
cA, keyCertSign), and device leaves (EKU clientAuth, CN = registration id; P-256, one RSA-2048).
The device authenticates in the TLS handshake; the server asks for a client certificate on
8883/443 but does not require one, and the engine judges the chain against the enrollments:

- individual X.509 enrollments match the leaf (thumbprint);
- enrollment groups match when the chain (what the device sent plus enrolled certificates)
  reaches the group's signing certificate, walking from the leaf upward;
- groups may instead reference a CA certificate uploaded through `/certificates`, which only
  counts after proof of possession (`generateVerificationCode` + `verify`).

The Python provisioning client speaks MQTT only and says little about *why* it was refused, so
the negative cases use the HTTPS device API with the client certificate (`requests`' ``cert=``):
    PUT https://{host}/{idScope}/registrations/{regId}/register?api-version=2021-06-01
and assert the DPS error body (401000 and a message naming the problem). Each has a positive
control built by the same helpers (``test_https_x509_group_device_control``).
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional
from urllib.parse import quote

import pytest
import requests
from azure.iot.device import X509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interop_util import (
    DEVICE_API_VERSION,
    assert_registered,
    assert_x509_registration_fails,
    call_with_timeout,
    error_body,
    hub_device_client_x509,
    register_device_x509,
    service_request,
    unique_id,
)

HTTP_TIMEOUT = 15


def _NOW() -> dt.datetime:  # noqa: N802
    return dt.datetime.now(dt.timezone.utc)


# --------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def _sha1(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - thumbprint, not security


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    intermediates: List[x509.Certificate]  # this CA (if not a root) and the intermediates above it

    @property
    def pem(self) -> str:
        return _pem(self.cert)

    @property
    def name(self) -> x509.Name:
        return self.cert.subject


@dataclass
class DeviceCert:
    rid: str
    cert: x509.Certificate
    key_path: str
    leaf_path: str  # the leaf alone
    chain_path: str  # leaf + its intermediates (not the root)

    @property
    def pem(self) -> str:
        return _pem(self.cert)

    @property
    def sha256(self) -> str:
        return _sha256(self.cert)

    def x509(self, full_chain: bool = True) -> X509:
        return X509(cert_file=self.chain_path if full_chain else self.leaf_path, key_file=self.key_path)

    def tls(self, full_chain: bool = True):
        """`requests`' ``cert=`` argument."""
        return (self.chain_path if full_chain else self.leaf_path, self.key_path)


class Pki:
    """Makes CAs and device certificates, writing device files under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.tag = uuid.uuid4().hex[:6]  # keeps subjects distinct between runs/modules

    def _build(self, subject, issuer_name, issuer_key, public_key, not_before, not_after):
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )

    def root(self, label: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{label} root {self.tag}")
        now = _NOW()
        cert = (
            self._build(subject, subject, key, key.public_key(), now - dt.timedelta(days=1), now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .sign(key, hashes.SHA256())
        )
        return Ca(cert, key, intermediates=[])

    def intermediate(self, label: str, issuer: Ca) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _NOW()
        cert = (
            self._build(
                _name(f"{label} intermediate {self.tag}"),
                issuer.name,
                issuer.key,
                key.public_key(),
                now - dt.timedelta(days=1),
                now + dt.timedelta(days=365),
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .sign(issuer.key, hashes.SHA256())
        )
        return Ca(cert, key, intermediates=[cert] + issuer.intermediates)

    def leaf_cert(
        self,
        cn: str,
        issuer: Ca,
        public_key,
        *,
        not_before: Optional[dt.datetime] = None,
        not_after: Optional[dt.datetime] = None,
        eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    ) -> x509.Certificate:
        now = _NOW()
        rsa_key = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            self._build(
                _name(cn),
                issuer.name,
                issuer.key,
                public_key,
                not_before or now - dt.timedelta(hours=1),
                not_after or now + dt.timedelta(days=30),
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=rsa_key,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        return builder.sign(issuer.key, hashes.SHA256())

    def device(self, cn: str, issuer: Ca, *, rsa_key: bool = False, **kw) -> DeviceCert:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
        cert = self.leaf_cert(cn, issuer, key.public_key(), **kw)
        stem = self.dir / uuid.uuid4().hex[:10]
        key_path, leaf_path, chain_path = (Path(f"{stem}{s}") for s in (".key.pem", ".leaf.pem", ".chain.pem"))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        leaf_path.write_text(_pem(cert))
        # leaf + the issuing intermediates, nearest first; the root is never sent
        chain_path.write_text(_pem(cert) + "".join(_pem(c) for c in issuer.intermediates))
        return DeviceCert(cn, cert, str(key_path), str(leaf_path), str(chain_path))


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Hierarchy:
    pki: Pki
    root: Ca
    inter: Ca  # enrolled as the signing certificate of `intermediate_group`
    inter_b: Ca  # under the same root, enrolled nowhere (reaches the root's CA reference)
    foreign_root: Ca  # unrelated to every enrollment
    foreign_inter: Ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Hierarchy:
    p = Pki(tmp_path_factory.mktemp("x509"))
    root = p.root("interop")
    foreign = p.root("foreign")
    return Hierarchy(
        pki=p,
        root=root,
        inter=p.intermediate("interop A", root),
        inter_b=p.intermediate("interop B", root),
        foreign_root=foreign,
        foreign_inter=p.intermediate("foreign", foreign),
    )


@pytest.fixture(scope="module")
def intermediate_group(service_client, pki) -> str:
    """An enabled X.509 enrollment group whose signing certificate is the intermediate."""
    gid = unique_id("x509-grp")
    created = service_client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {
                "type": "x509",
                "x509": {"signingCertificates": {"primary": {"certificate": pki.inter.pem}}},
            },
            "initialTwin": {"properties": {"desired": {"x509Group": gid}}},
        },
    )
    info = created["attestation"]["x509"]["signingCertificates"]["primary"]
    assert "certificate" not in info, created
    assert info["info"]["sha256Thumbprint"] == _sha256(pki.inter.cert), created
    return gid


# --------------------------------------------------------------------------------------
# raw HTTPS device API + service /certificates
# --------------------------------------------------------------------------------------


def _device_url(server, rid: str, suffix: str) -> str:
    return (
        f"https://{server.provisioning_host}/{server.id_scope}/registrations/{quote(rid, safe='')}"
        f"/{suffix}?api-version={DEVICE_API_VERSION}"
    )


def _https_register(server, rid: str, tls=None, headers=None):
    return requests.put(
        _device_url(server, rid, "register"),
        json={"registrationId": rid},
        headers={"Accept": "application/json", **(headers or {})},
        cert=tls,
        verify=server.ca_path,
        timeout=HTTP_TIMEOUT,
    )


def _https_register_and_poll(server, rid: str, tls) -> dict:
    """PUT register (must be 202), then poll the operation until it completes (200)."""
    resp = _https_register(server, rid, tls)
    assert resp.status_code == 202, f"HTTP {resp.status_code}: {resp.text!r}"
    op = resp.json()
    assert op.get("operationId"), op
    deadline = time.monotonic() + 15
    while True:
        poll = requests.get(
            _device_url(server, rid, f"operations/{op['operationId']}"),
            headers={"Accept": "application/json"},
            cert=tls,
            verify=server.ca_path,
            timeout=HTTP_TIMEOUT,
        )
        assert poll.status_code in (200, 202), f"HTTP {poll.status_code}: {poll.text!r}"
        status = poll.json()
        if poll.status_code == 200:
            return status
        assert status.get("status") == "assigning", status
        assert time.monotonic() < deadline, f"registration of {rid} did not complete in 15s: {status}"
        time.sleep(min(float(poll.headers.get("retry-after", "1")), 1.0))


def _assert_rejected(resp, *needles: str, status: int = 401, code: int = 401000) -> dict:
    assert resp.status_code == status, f"HTTP {resp.status_code}: {resp.text!r}"
    body = error_body(resp)
    assert body.get("errorCode") == code, body
    message = body.get("message") or ""
    for needle in needles:
        assert needle.lower() in message.lower(), f"message does not mention {needle!r}: {body}"
    return body


def _assert_sdk_rejected(server, rid: str, dev: DeviceCert, needle: str = "CredentialError") -> None:
    """The official SDK's register() is refused by the service (not a dropped connection). A
    certificate the service does not accept is refused at CONNECT (CONNACK 5), as Azure does, so
    the SDK raises CredentialError; a disabled enrollment is a registration result instead."""
    exc = assert_x509_registration_fails(server, rid, dev.x509())
    seen = f"{exc!r} {exc.__cause__!r}"
    assert needle in seen, f"expected {needle!r} in the SDK's error: {seen}"


def _upload_ca(server, name: str, pem: str) -> dict:
    resp = service_request(server, "PUT", f"/certificates/{name}", {"certificate": pem, "isVerified": False})
    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text!r}"
    return resp.json()


def _create_ca_reference_group(service_client, name: str) -> str:
    gid = unique_id("x509-caref")
    service_client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": name}}},
        },
    )
    return gid


def _issue_verification_cert(pki: Pki, ca: Ca, code: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return _pem(pki.leaf_cert(code, ca, key.public_key(), eku=()))


# --------------------------------------------------------------------------------------
# 1. individual X.509 enrollment
# --------------------------------------------------------------------------------------


def test_individual_x509_enrollment(dps_server, service_client, registry_manager, pki):
    rid = unique_id("x509-ind")
    dev = pki.pki.device(rid, pki.root)  # signed by the root; the individual enrollment decides
    created = service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {
                "type": "x509",
                "x509": {"clientCertificates": {"primary": {"certificate": dev.pem}}},
            },
        },
    )
    assert created["attestation"]["type"] == "x509", created

    # the service shows the certificate's info, never the certificate itself
    got = service_client.enrollment.get(id=rid)
    primary = got["attestation"]["x509"]["clientCertificates"]["primary"]
    assert "certificate" not in primary, got
    info = primary["info"]
    assert info["sha256Thumbprint"] == dev.sha256, info
    assert info["sha1Thumbprint"].upper() == _sha1(dev.cert), info
    assert rid in info["subjectName"], info

    result = register_device_x509(dps_server, rid, dev.x509())
    assert_registered(result, dps_server, rid)

    # the hub identity authenticates by the leaf's SHA-256 thumbprint
    device = registry_manager.get_device(rid)
    assert device.authentication.type == "selfSigned", device.authentication
    assert device.authentication.x509_thumbprint.primary_thumbprint == dev.sha256, device.authentication.x509_thumbprint

    with hub_device_client_x509(dps_server, rid, dev.x509()) as client:
        call_with_timeout(lambda: client.send_message('{"x509": "individual"}'), what="send_message")
        twin = call_with_timeout(client.get_twin, what="get_twin")
        assert "desired" in twin and "reported" in twin, twin

    state = service_client.device_registration_state.get(id=rid)
    assert state["status"] == "assigned", state
    assert state["deviceId"] == rid, state


# --------------------------------------------------------------------------------------
# 2./3. enrollment group on the intermediate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("full_chain", [False, True], ids=["leaf-only", "leaf+intermediate"])
def test_group_on_intermediate(dps_server, registry_manager, pki, intermediate_group, full_chain):
    rid = unique_id("x509-gdev")
    dev = pki.pki.device(rid, pki.inter)

    result = register_device_x509(dps_server, rid, dev.x509(full_chain))
    assert_registered(result, dps_server, rid)

    device = registry_manager.get_device(rid)
    assert device.authentication.type == "selfSigned", device.authentication
    assert device.authentication.x509_thumbprint.primary_thumbprint == dev.sha256

    with hub_device_client_x509(dps_server, rid, dev.x509(full_chain)) as client:
        call_with_timeout(lambda: client.send_message(f"hello from {rid}"), what="send_message")
        twin = call_with_timeout(client.get_twin, what="get_twin")
        assert twin["desired"].get("x509Group") == intermediate_group, twin


def test_group_rsa_device(dps_server, pki, intermediate_group):
    rid = unique_id("x509-rsa")
    dev = pki.pki.device(rid, pki.inter, rsa_key=True)
    assert isinstance(dev.cert.public_key(), rsa.RSAPublicKey)
    assert dev.cert.public_key().key_size == 2048

    result = register_device_x509(dps_server, rid, dev.x509())
    assert_registered(result, dps_server, rid)
    with hub_device_client_x509(dps_server, rid, dev.x509()) as client:
        call_with_timeout(lambda: client.send_message("rsa telemetry"), what="send_message")


def test_group_devices_in_registration_query(dps_server, service_client, pki, intermediate_group):
    rid = unique_id("x509-q")
    dev = pki.pki.device(rid, pki.inter)
    status = _https_register_and_poll(dps_server, rid, dev.tls())
    assert status["status"] == "assigned", status
    states = {s["registrationId"]: s for s in service_client.device_registration_state.query(id=intermediate_group)}
    assert rid in states, states
    assert states[rid]["status"] == "assigned", states[rid]


# --------------------------------------------------------------------------------------
# 4. CA reference with proof of possession
# --------------------------------------------------------------------------------------


def test_ca_reference_requires_proof_of_possession(dps_server, service_client, pki):
    server = dps_server
    name = unique_id("root-ca")
    root = pki.root

    uploaded = _upload_ca(server, name, root.pem)
    assert uploaded["name"] == name, uploaded
    assert uploaded.get("etag"), uploaded
    props = uploaded["properties"]
    assert props["isVerified"] is False, props
    assert props["sha256Thumbprint"] == _sha256(root.cert), props
    assert props["thumbprint"] == _sha1(root.cert), props
    assert root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value in props["subject"], props
    assert props.get("certificate") and props.get("created") and props.get("updated") and props.get("expiry"), props

    # a second upload under the same name without If-Match is a conflict
    again = service_request(server, "PUT", f"/certificates/{name}", {"certificate": root.pem, "isVerified": False})
    _assert_rejected(again, status=409, code=409301)

    listed = service_request(server, "GET", "/certificates")
    assert listed.status_code == 200, listed.text
    listed_body = listed.json()
    items = listed_body.get("value", listed_body) if isinstance(listed_body, dict) else listed_body
    assert name in [c["name"] for c in items], listed_body

    gid = _create_ca_reference_group(service_client, name)

    # a device under the root (via an intermediate enrolled nowhere) is refused while unverified
    rid = unique_id("x509-caref-dev")
    dev = pki.pki.device(rid, pki.inter_b)
    _assert_sdk_rejected(server, rid, dev)
    _assert_rejected(_https_register(server, rid, dev.tls()), name, "not verified")

    # proof of possession: wrong CN, then a right CN from the wrong CA, then the real thing
    gen = service_request(server, "POST", f"/certificates/{name}/generateVerificationCode")
    assert gen.status_code == 200, gen.text
    code = gen.json()["properties"]["verificationCode"]
    assert code, gen.json()

    bad_cn = _issue_verification_cert(pki.pki, root, "not-the-code")
    resp = service_request(server, "POST", f"/certificates/{name}/verify", {"certificate": bad_cn})
    _assert_rejected(resp, "verification code", status=400, code=400302)

    wrong_ca = _issue_verification_cert(pki.pki, pki.foreign_root, code)
    resp = service_request(server, "POST", f"/certificates/{name}/verify", {"certificate": wrong_ca})
    _assert_rejected(resp, status=400, code=400302)
    assert service_request(server, "GET", f"/certificates/{name}").json()["properties"]["isVerified"] is False

    good = _issue_verification_cert(pki.pki, root, code)
    resp = service_request(server, "POST", f"/certificates/{name}/verify", {"certificate": good})
    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text!r}"
    assert resp.json()["properties"]["isVerified"] is True, resp.json()
    got = service_request(server, "GET", f"/certificates/{name}")
    assert got.status_code == 200 and got.json()["properties"]["isVerified"] is True, got.text

    # now the device registers through the CA-reference group
    assert_registered(register_device_x509(server, rid, dev.x509()), server, rid)
    state = service_client.device_registration_state.get(id=rid)
    assert state["status"] == "assigned", state
    assert rid in {s["registrationId"] for s in service_client.device_registration_state.query(id=gid)}


def test_ca_certificate_delete(dps_server, pki):
    name = unique_id("tmp-ca")
    _upload_ca(dps_server, name, pki.foreign_root.pem)
    assert service_request(dps_server, "GET", f"/certificates/{name}").status_code == 200
    resp = service_request(dps_server, "DELETE", f"/certificates/{name}")
    assert resp.status_code in (200, 204), f"HTTP {resp.status_code}: {resp.text!r}"
    gone = service_request(dps_server, "GET", f"/certificates/{name}")
    assert gone.status_code == 404, f"HTTP {gone.status_code}: {gone.text!r}"


# --------------------------------------------------------------------------------------
# 5. rejections (raw HTTPS with the client certificate; positive control first)
# --------------------------------------------------------------------------------------


def test_https_x509_group_device_control(dps_server, pki, intermediate_group):
    rid = unique_id("x509-ctl")
    dev = pki.pki.device(rid, pki.inter)
    status = _https_register_and_poll(dps_server, rid, dev.tls())
    assert status["status"] == "assigned", status
    state = status["registrationState"]
    assert state["registrationId"] == rid and state["deviceId"] == rid, state
    assert state["assignedHub"] == dps_server.hub_host, state
    x = state.get("x509") or {}
    assert x.get("enrollmentGroupId") == intermediate_group, state
    assert (x.get("certificateInfo") or {}).get("sha256Thumbprint") == dev.sha256, state
    assert (x.get("signingCertificateInfo") or {}).get("sha256Thumbprint") == _sha256(pki.inter.cert), state


def test_expired_leaf(dps_server, pki, intermediate_group):
    rid = unique_id("x509-exp")
    now = _NOW()
    dev = pki.pki.device(rid, pki.inter, not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    _assert_rejected(_https_register(dps_server, rid, dev.tls()), "expired")


def test_not_yet_valid_leaf(dps_server, pki, intermediate_group):
    rid = unique_id("x509-nyv")
    now = _NOW()
    dev = pki.pki.device(rid, pki.inter, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30))
    body = _assert_rejected(_https_register(dps_server, rid, dev.tls()))
    msg = body["message"].lower()
    assert "not valid before" in msg or "not yet valid" in msg, body


def test_server_auth_only_leaf(dps_server, pki, intermediate_group):
    rid = unique_id("x509-eku")
    dev = pki.pki.device(rid, pki.inter, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    _assert_rejected(_https_register(dps_server, rid, dev.tls()), "clientAuth")


def test_unknown_ca(dps_server, pki, intermediate_group):
    rid = unique_id("x509-unk")
    dev = pki.pki.device(rid, pki.foreign_inter)
    # Not enrolled, and nothing said about which CAs are (the missing issuer is in the server log).
    _assert_rejected(_https_register(dps_server, rid, dev.tls()), "is not enrolled")
    # the MQTT path (official SDK) refuses it as well
    _assert_sdk_rejected(dps_server, rid, dev)


def test_unverified_ca_reference(dps_server, service_client, pki):
    other = pki.pki.root("unverified")
    name = unique_id("unverified-ca")
    _upload_ca(dps_server, name, other.pem)
    _create_ca_reference_group(service_client, name)
    rid = unique_id("x509-unv")
    dev = pki.pki.device(rid, other)
    _assert_rejected(_https_register(dps_server, rid, dev.tls()), "not verified")


def test_cn_does_not_match_registration_id(dps_server, pki, intermediate_group):
    cn = unique_id("x509-cn")
    dev = pki.pki.device(cn, pki.inter)
    other = unique_id("x509-other")
    _assert_rejected(_https_register(dps_server, other, dev.tls()), "does not match")
    _assert_sdk_rejected(dps_server, other, dev)


def test_cn_breaks_registration_id_rules(dps_server, pki, intermediate_group):
    rid = f"bad device {uuid.uuid4().hex[:8]}"
    dev = pki.pki.device(rid, pki.inter)
    _assert_rejected(_https_register(dps_server, rid, dev.tls()), status=400, code=400001)


def test_disabled_individual_enrollment_under_enabled_group(dps_server, service_client, pki, intermediate_group):
    rid = unique_id("x509-revoked")
    dev = pki.pki.device(rid, pki.inter)
    service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "provisioningStatus": "disabled",
            "attestation": {
                "type": "x509",
                "x509": {"clientCertificates": {"primary": {"certificate": dev.pem}}},
            },
        },
    )
    status = _https_register_and_poll(dps_server, rid, dev.tls())
    assert status["status"] == "disabled", status
    state = status.get("registrationState") or {}
    assert state.get("errorCode") == 401003, status
    assert "disabled" in (state.get("errorMessage") or ""), status
    # the SDK polls to the same end (it reports "disabled" as an unexpected status)
    _assert_sdk_rejected(dps_server, rid, dev, needle="disabled")

    # deleting (instead of disabling) the individual enrollment lets the group take the device
    service_client.enrollment.delete(id=rid)
    status = _https_register_and_poll(dps_server, rid, dev.tls())
    assert status["status"] == "assigned", status
    assert (status["registrationState"].get("x509") or {}).get("enrollmentGroupId") == intermediate_group, status


def test_no_certificate_and_no_authorization(dps_server, pki, intermediate_group):
    # A TLS client cannot even offer a certificate without its key: OpenSSL refuses the pair
    # before any handshake, and the server's TLS stack demands CertificateVerify. What remains
    # observable at the protocol level is a request carrying no credential at all.
    rid = unique_id("x509-nocred")
    dev = pki.pki.device(rid, pki.inter)
    stranger = pki.pki.device(unique_id("x509-stranger"), pki.inter)
    ctx = ssl.create_default_context()
    with pytest.raises(ssl.SSLError):
        ctx.load_cert_chain(dev.leaf_path, stranger.key_path)

    _assert_rejected(_https_register(dps_server, rid, tls=None), "no credential")
