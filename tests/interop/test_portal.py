"""The web portal end to end in headless Chromium (Debian's `chromium`), driven by
`playwright-core` (tests/interop/node/portal_e2e.js) as an operator would use it: sign in;
create an individual enrollment with a symmetric key and another from an uploaded `.pem`; a
device registered with the official Python SDK shows in the registration records and the
device explorer; its twin is edited, a direct method answered, its telemetry seen live; it is
sent a message, which it receives; its access is revoked and it is refused; an enrollment group
is made and a CA certificate uploaded and verified; a credential policy is made and the group names it; a
device certificate is revoked and the revocation removed; a read-only policy sees no write action and cannot post. Every
page is kept as a screenshot under `tests/interop/artifacts/portal/` (or `$DPS_ARTIFACTS`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dps_bin
from interop_util import NODE_DIR, unique_id

HERE = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("DPS_ARTIFACTS", HERE / "artifacts")) / "portal"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def test_an_operator_manages_devices_through_the_portal(dps_server, artifacts, tmp_path):
    assert Path(CHROMIUM).exists(), "chromium is installed by scripts/install-deps.sh"
    owner = dps_server.cli("policy", "show", "--pn", "provisioningserviceowner")
    reader = dps_server.cli("policy", "create", "--pn", "portal-reader", "--rights", "EnrollmentRead", "RegistrationStatusRead")
    x509_id = unique_id("portal-x509")
    subprocess.run(
        [str(dps_bin()), "ca", "create-root", "--name", "root", "--out-dir", str(tmp_path)],
        check=True, capture_output=True,
    )
    subprocess.run(
        [
            str(dps_bin()), "ca", "issue-device", "--registration-id", x509_id,
            "--ca-cert", str(tmp_path / "root.pem"), "--ca-key", str(tmp_path / "root.key"),
            "--out-dir", str(tmp_path), "--leaf-only",
        ],
        check=True, capture_output=True,
    )
    link = subprocess.run(
        [str(dps_bin()), "portal-link", "--data-dir", str(dps_server.data_dir)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert link.startswith(f"https://{dps_server.host}/portal/sign-in?link="), link
    args = {
        "link": link,
        "base": f"https://{dps_server.host}",
        "host": dps_server.provisioning_host,
        "hub": dps_server.hub_host,
        "ca": dps_server.ca_path,
        "chromium": CHROMIUM,
        "python": sys.executable,
        "deviceHelper": str(HERE / "portal_device.py"),
        "screenshots": str(artifacts),
        "messagesFile": str(tmp_path / "messages.txt"),
        "owner": {"name": owner["keyName"], "key": owner["primaryKey"]},
        "reader": {"name": reader["keyName"], "key": reader["primaryKey"]},
        "symmetricId": unique_id("portal-sym"),
        "x509Id": x509_id,
        "x509Pem": str(tmp_path / f"{x509_id}.pem"),
        "groupId": unique_id("portal-group"),
        "dps": str(dps_bin()),
        "rootPem": str(tmp_path / "root.pem"),
        "rootKey": str(tmp_path / "root.key"),
        "verificationPem": str(tmp_path / "verification.pem"),
    }
    proc = subprocess.run(
        ["node", "portal_e2e.js", json.dumps(args)], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"portal_e2e.js printed nothing (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert result["ok"], f"failed at: {result['step']}\n{result['error']}\nseen: {result['seen']}\n{dps_server.logs()}"
    seen = result["seen"]

    assert seen["redirectedTo"] == "/portal/"
    assert "no policy of that name has that key" in seen["wrongKey"]
    assert seen["idScope"] == dps_server.id_scope
    assert seen["linkAgain"]["status"] == 400 and "used already" in seen["linkAgain"]["body"], seen["linkAgain"]
    assert seen["generatedKey"]
    assert seen["enrollments"] == 2 and seen["searchHits"] == 1
    assert "assigned" in seen["record"] and dps_server.hub_host in seen["record"], seen["record"]
    assert seen["twin"].get("color") == "blue", seen["twin"]
    assert seen.get("messageReceived"), "the device received the portal's message"
    assert '"echo"' in seen["method"] and '"delay": 1' in seen["method"], seen["method"]
    assert seen.get("telemetry") and seen.get("caVerified")
    assert "P-384" in seen["policyRow"] and "Built-in" in seen["policyRow"], seen["policyRow"]
    assert seen["groupPolicy"] == "portal-fleet"
    assert f"CN={x509_id}" in seen["revokedRow"] and "manual" in seen["revokedRow"], seen["revokedRow"]
    assert seen.get("revocationRemoved")
    assert seen["deviceStatus"] == "disabled"
    # The Python SDK raises on a `disabled` registration result ("Unexpected failure"); the
    # server's own record of the attempt says what it answered.
    assert seen["afterRevoke"].get("status") != "assigned", seen["afterRevoke"]
    attempts = dps_server.cli("audit", "list", "--kind", "registration", "--registration-id", args["symmetricId"])
    assert [a["outcome"] for a in attempts] == ["assigned", "disabled"], attempts
    assert seen["readerAddButtons"] == 0 and seen["readerDeleteButtons"] == 0
    assert seen["readerWrite"]["status"] == 401, seen["readerWrite"]
    assert "lacks" in seen["readerWrite"]["body"]["message"]
    assert seen["noCsrf"] == 403
    shots = sorted(p.name for p in artifacts.iterdir())
    for page in ["sign-in", "overview", "add-individual-enrollment", "enrollments", "enrollment-groups",
                 "registration-records", "device",
                 "device-revoked", "certificates", "device-certificates", "linked-hubs", "policies", "overview-phone",
                 "read-only-enrollments"]:
        assert any(name.endswith(f"-{page}.png") for name in shots), f"no screenshot of {page}: {shots}"

    # The portal's changes are in the audit trail under the policy that made them.
    changes = dps_server.cli("audit", "list", "--kind", "change", "--top", "1000")
    assert any(c.get("operation") == f"PUT /enrollments/{args['symmetricId']}" and c.get("policy") == "provisioningserviceowner" for c in changes)
