// Provisions one device with the official Node provisioning SDK and prints the result as JSON.
// Driven by tests/interop/test_node_*.py. Arguments come as one JSON object in argv[2]:
//   {host, idScope, registrationId, transport: "Amqp"|"AmqpWs"|"Mqtt"|"MqttWs"|"Http",
//    symmetricKey? | certFile?+keyFile?, payload?}
// The server's CA comes from NODE_EXTRA_CA_CERTS, as Node users point it at a private CA.
'use strict';
const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');

const args = JSON.parse(process.argv[2]);

function transportFor(name) {
  switch (name) {
    case 'Amqp': return new (require('azure-iot-provisioning-device-amqp').Amqp)();
    case 'AmqpWs': return new (require('azure-iot-provisioning-device-amqp').AmqpWs)();
    default: throw new Error('unknown transport ' + name);
  }
}

function security() {
  if (args.symmetricKey) {
    const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
    return new SymmetricKeySecurityClient(args.registrationId, args.symmetricKey);
  }
  const { X509Security } = require('azure-iot-security-x509');
  return new X509Security(args.registrationId, {
    cert: fs.readFileSync(args.certFile, 'utf8'),
    key: fs.readFileSync(args.keyFile, 'utf8'),
  });
}

const client = ProvisioningDeviceClient.create(args.host, args.idScope, transportFor(args.transport), security());
if (args.payload !== undefined) client.setProvisioningPayload(args.payload);
client.register((err, result) => {
  if (err) {
    console.log(JSON.stringify({ error: { name: err.name, message: err.message, result: err.result } }));
    process.exit(0);
  }
  console.log(JSON.stringify({ result }));
  process.exit(0);
});
