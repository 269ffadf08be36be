"""The device side of the portal's end-to-end test (test_portal.py), run by its browser script
(node/portal_e2e.js) between steps, with the official Python device SDK:

- ``register {json}``: provisions with a symmetric key; prints ``{"status", "hub", "deviceId"}``
  (or ``{"error"}``).
- ``listen {json}``: connects to the hub as the device, sends one telemetry message, answers
  direct methods (200, echoing the payload) and appends each cloud-to-device message's body to
  a file, for ``seconds``.
"""

from __future__ import annotations

import json
import sys
import time


def register(a: dict) -> dict:
    from azure.iot.device import ProvisioningDeviceClient

    prov = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=a["host"],
        registration_id=a["registrationId"],
        id_scope=a["idScope"],
        symmetric_key=a["key"],
        server_verification_cert=open(a["ca"]).read(),
    )
    try:
        r = prov.register()
        state = r.registration_state
        return {
            "status": r.status,
            "hub": state.assigned_hub if state else None,
            "deviceId": state.device_id if state else None,
        }
    except Exception as e:  # noqa: BLE001 - the test reads the refusal
        return {"error": str(e)}
    finally:
        from interop_util import _shutdown_provisioning_client

        _shutdown_provisioning_client(prov)


def listen(a: dict) -> dict:
    from azure.iot.device import IoTHubDeviceClient

    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=a["key"],
        hostname=a["hub"],
        device_id=a["deviceId"],
        server_verification_cert=open(a["ca"]).read(),
    )

    def received(message):
        with open(a["file"], "a") as f:
            f.write(message.data.decode("utf-8", "replace") + "\n")

    def method(request):
        from azure.iot.device import MethodResponse

        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"echo": request.payload}))

    client.on_message_received = received
    client.on_method_request_received = method
    client.connect()
    # Telemetry for the portal's live view, before the file says the device is listening.
    client.send_message("hello-telemetry")
    with open(a["file"], "a"):
        pass
    try:
        time.sleep(a.get("seconds", 60))
    finally:
        client.shutdown()
    return {"listened": True}


if __name__ == "__main__":
    command, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"register": register, "listen": listen}[command](args)), flush=True)
