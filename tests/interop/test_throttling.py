"""Azure's DPS quotas against the unmodified Python device SDK (azure-iot-device 2.14.0).

The server runs with one registration per second for the whole service. Several devices
register at once, so all but one are answered `429` on the MQTT response topic
`$dps/registrations/res/429/?$rid=...&retry-after=1`. The SDK treats a status >= 429 as
transient (`RegistrationStage._process_retry_status_code`): it waits `retry-after` seconds and
sends the same register request again, so every device completes. The SDK's own log says that
it retried, and the server's log says how many requests it refused.

The per-device poll limit (5 per 10 s) is never reached by this SDK: it polls once, 2 s after
the register reply, then every `retry-after` (3 s) while assigning; the Rust tests show the 429
on polls over MQTT and HTTPS.
"""

from __future__ import annotations

import logging
import re
import threading

from interop_util import assert_registered, random_key, register_device, unique_id

DPS_SERVE_ARGS = ["--registrations-per-second", "1"]

DEVICES = 4
SDK_STAGES_LOGGER = "azure.iot.device.provisioning.pipeline.pipeline_stages_provisioning"


def test_throttled_registrations_are_retried_by_the_sdk_and_complete(dps_server, service_client, caplog):
    devices = []
    for i in range(DEVICES):
        rid = unique_id(f"thr{i}")
        key = random_key()
        service_client.enrollment.create_or_update(
            id=rid,
            enrollment={
                "registrationId": rid,
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
            },
        )
        devices.append((rid, key))

    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}
    start = threading.Barrier(DEVICES)

    def run(rid: str, key: str) -> None:
        start.wait()
        try:
            results[rid] = register_device(dps_server, rid, key)
        except BaseException as e:  # noqa: BLE001 - reported below with the device
            errors[rid] = e

    caplog.set_level(logging.INFO, logger=SDK_STAGES_LOGGER)
    threads = [threading.Thread(target=run, args=d) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors, f"registrations failed: {errors}\n{dps_server.logs()}"
    for rid, _ in devices:
        assert_registered(results[rid], dps_server, rid)

    # The SDK was throttled and retried after the server's retry-after: the wait for the next
    # token at 1/s, rounded up to whole seconds (2 when concurrent requests took their time
    # stamps in a different order than they reached the bucket).
    retries = [r.getMessage() for r in caplog.records if "Op needs retry" in r.getMessage()]
    assert retries, "the SDK never logged a retry: no request was throttled"
    assert all(re.search(r"interval [12] ", m) for m in retries), (retries, dps_server.logs())
    # The server summarized its refusals (one log line per quota at most every 10 s).
    log = re.sub(r"\x1b\[[0-9;]*m", "", dps_server.logs(10**6))  # the server colours its log
    refused = [int(n) for n in re.findall(r"quota=Registrations limit=1 refused=(\d+)", log)]
    assert refused and sum(refused) >= 1, log
