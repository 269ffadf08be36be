// The web portal end to end, in headless Chromium (Debian's `chromium`) driven by
// playwright-core, as an operator would use it: run by tests/interop/test_portal.py, which
// passes the server, the policies, a device certificate and the Python device helper. Every
// page is kept as a screenshot in `screenshots`. Prints one JSON object: what was seen, or the
// step that failed and why.
'use strict';

const fs = require('fs');
const path = require('path');
const { execFileSync, spawn } = require('child_process');
const { chromium } = require('playwright-core');

const a = JSON.parse(process.argv[2]);
const seen = {};
let step = 'start';
let shot = 0;

async function snap(page, name) {
  shot += 1;
  await page.screenshot({ path: path.join(a.screenshots, `${String(shot).padStart(2, '0')}-${name}.png`), fullPage: true });
}

/** Runs the Python device helper (`register`) and returns its JSON. */
function device(command, args) {
  const out = execFileSync(a.python, [a.deviceHelper, command, JSON.stringify(args)], { encoding: 'utf8', timeout: 90000 });
  return JSON.parse(out.trim().split('\n').pop());
}

async function signIn(page, name, key) {
  await page.getByLabel('Policy name').fill(name);
  await page.getByLabel('Key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function go(page, hash, heading) {
  await page.goto(`${a.base}/portal/${hash}`);
  await page.getByRole('heading', { level: 1, name: heading }).waitFor();
}

async function main() {
  fs.mkdirSync(a.screenshots, { recursive: true });
  const browser = await chromium.launch({ executablePath: a.chromium, args: ['--no-sandbox'] });
  // The server's certificate is from its own local CA, which this throwaway profile does not
  // hold: the test trusts it by skipping the check (the server side of TLS is tested elsewhere).
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('dialog', (d) => d.accept());
  try {
    step = 'a browser asking for / is sent to the portal, which asks it to sign in';
    await page.goto(`${a.base}/`);
    seen.redirectedTo = new URL(page.url()).pathname;
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await snap(page, 'sign-in');

    step = 'a wrong key is refused with a message';
    await signIn(page, a.owner.name, 'AAAAAAAAAAAAAAAAAAAAAA==');
    seen.wrongKey = await page.getByRole('alert').innerText();

    step = 'the owner signs in with a one-time link, which works once';
    await page.goto(a.link);
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    const again = await context.request.get(a.link, { maxRedirects: 0 });
    seen.linkAgain = { status: again.status(), body: await again.text() };
    await page.getByText('Counts').waitFor();
    seen.idScope = await page.locator('dl.props dd').first().innerText();
    await snap(page, 'overview');

    step = 'an individual enrollment with a symmetric key, keys generated';
    await go(page, '#/enrollments', 'Manage enrollments');
    await page.getByRole('link', { name: 'Add individual enrollment' }).click();
    await page.getByLabel('Mechanism').selectOption('symmetricKey');
    await page.getByLabel('Registration ID').fill(a.symmetricId);
    await page.getByLabel('Initial device twin state').fill(JSON.stringify({ tags: { site: 'portal' }, properties: { desired: { mode: 'test' } } }));
    await snap(page, 'add-individual-enrollment');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('heading', { name: `Individual enrollment ${a.symmetricId}` }).waitFor();
    const key = await page.getByLabel('Primary key', { exact: true }).inputValue();
    seen.generatedKey = key.length > 0;

    step = 'an individual enrollment from an uploaded .pem';
    await go(page, '#/enrollments/individual/new', 'Add individual enrollment');
    await page.getByLabel('Mechanism').selectOption('x509');
    await page.getByLabel('Registration ID').fill(a.x509Id);
    await page.getByLabel('Primary certificate .pem or .cer file').setInputFiles(a.x509Pem);
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('heading', { name: `Individual enrollment ${a.x509Id}` }).waitFor();
    await go(page, '#/enrollments', 'Manage enrollments');
    await page.getByRole('link', { name: a.x509Id }).waitFor();
    seen.enrollments = await page.locator('tbody tr').count();
    await page.getByLabel('Search').fill(a.x509Id);
    seen.searchHits = await page.locator('tbody tr').count();
    await snap(page, 'enrollments');

    step = 'a device registered with the Python SDK shows in the registration records';
    const registered = device('register', { host: a.host, idScope: seen.idScope, registrationId: a.symmetricId, key, ca: a.ca });
    if (registered.status !== 'assigned') throw new Error('the device did not register: ' + JSON.stringify(registered));
    await go(page, '#/registrations', 'Registration records');
    const record = page.locator('tr', { hasText: a.symmetricId });
    await record.waitFor();
    seen.record = await record.innerText();
    await snap(page, 'registration-records');

    step = 'the device shows in the device explorer; its twin is edited';
    const listener = spawn(a.python, [a.deviceHelper, 'listen', JSON.stringify({ hub: a.hub, deviceId: a.symmetricId, key, ca: a.ca, file: a.messagesFile, seconds: 90 })], { stdio: 'ignore' });
    await go(page, `#/hubs/${encodeURIComponent(a.hub)}/devices`, `Devices of ${a.hub}`);
    await page.getByRole('link', { name: a.symmetricId }).click();
    await page.getByRole('heading', { name: `Device ${a.symmetricId}` }).waitFor();
    await page.getByLabel('Tags and desired properties (JSON)').fill(JSON.stringify({ tags: { site: 'portal' }, properties: { desired: { color: 'blue' } } }));
    await page.getByRole('button', { name: 'Save twin' }).click();
    await page.getByText(/Twin saved/).waitFor();
    seen.twin = await page.evaluate(async ([hub, id]) => (await (await fetch(`/portal/api/hub/${encodeURIComponent(hub)}/twins/${encodeURIComponent(id)}`)).json()).properties.desired, [a.hub, a.symmetricId]);
    await snap(page, 'device');

    step = 'a direct method is answered by the device';
    for (let i = 0; i < 150 && !fs.existsSync(a.messagesFile); i++) await page.waitForTimeout(100);
    await page.waitForTimeout(1000);
    await page.getByLabel('Method name').fill('reboot');
    await page.getByLabel('Payload (JSON)').fill('{"delay": 1}');
    await page.getByRole('button', { name: 'Invoke method' }).click();
    await page.getByText(/status 200/).waitFor();
    seen.method = await page.getByText(/status 200/).innerText();

    step = 'the device\'s telemetry shows live';
    await page.getByRole('button', { name: 'Start' }).click();
    await page.locator('pre.stream', { hasText: 'hello-telemetry' }).waitFor();
    seen.telemetry = true;
    await page.getByRole('button', { name: 'Stop' }).click();

    step = 'a message is sent to the device, which receives it';
    await page.getByLabel('Message body').fill('hello from the portal');
    await page.getByLabel('Message properties').fill('source=portal');
    await page.getByRole('button', { name: 'Send message' }).click();
    await page.getByText(/Message sent/).waitFor();
    for (let i = 0; i < 150; i++) {
      const got = fs.existsSync(a.messagesFile) ? fs.readFileSync(a.messagesFile, 'utf8') : '';
      if (got.includes('hello from the portal')) { seen.messageReceived = true; break; }
      await page.waitForTimeout(100);
    }
    listener.kill();

    step = 'access is revoked: enrollment and device disabled, the device refused';
    await page.getByRole('button', { name: 'Revoke access' }).click();
    await page.getByText(/Revoked/).waitFor();
    await page.getByRole('heading', { name: `Device ${a.symmetricId}` }).waitFor();
    seen.deviceStatus = await page.locator('dl.props dd').nth(1).innerText();
    seen.afterRevoke = device('register', { host: a.host, idScope: seen.idScope, registrationId: a.symmetricId, key, ca: a.ca });
    await snap(page, 'device-revoked');

    step = 'an enrollment group with a symmetric key';
    await go(page, '#/enrollments/group/new', 'Add enrollment group');
    await page.getByLabel('Group name').fill(a.groupId);
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('heading', { name: `Enrollment group ${a.groupId}` }).waitFor();
    await go(page, '#/enrollments/group', 'Manage enrollments');
    await page.getByRole('link', { name: a.groupId }).waitFor();
    await snap(page, 'enrollment-groups');

    step = 'a CA certificate is uploaded and verified with proof of possession';
    await go(page, '#/certificates', 'Certificates');
    await page.getByLabel('Certificate name').fill('portal-root');
    await page.getByLabel('Certificate .pem or .cer file').setInputFiles(a.rootPem);
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('cell', { name: 'portal-root', exact: true }).waitFor();
    await page.getByRole('button', { name: 'Generate verification code' }).click();
    const code = await page.getByRole('textbox', { name: 'Verification code for portal-root' }).inputValue();
    execFileSync(a.dps, ['ca', 'issue-verification', '--code', code, '--ca-cert', a.rootPem, '--ca-key', a.rootKey, '--out', a.verificationPem]);
    await page.getByLabel('Verification certificate for portal-root').setInputFiles(a.verificationPem);
    await page.getByRole('button', { name: 'Verify' }).click();
    await page.getByRole('cell', { name: 'Verified', exact: true }).waitFor();
    seen.caVerified = true;

    step = 'a credential policy is made and an enrollment group names it';
    await go(page, '#/device-certificates', 'Device certificates');
    await page.getByLabel('Policy name').fill('portal-fleet');
    await page.getByLabel('Key type').selectOption('P-384');
    await page.getByLabel('Validity of issued certificates (days)').fill('7');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('cell', { name: 'portal-fleet', exact: true }).waitFor();
    seen.policyRow = await page.locator('tr', { hasText: 'portal-fleet' }).innerText();
    await go(page, `#/enrollments/group/${encodeURIComponent(a.groupId)}`, `Enrollment group ${a.groupId}`);
    await page.getByLabel('Credential policy').selectOption('portal-fleet');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByText(`Saved ${a.groupId}`).waitFor();
    seen.groupPolicy = await page.evaluate(async (id) => (await (await fetch(`/portal/api/service/enrollmentGroups/${encodeURIComponent(id)}`)).json()).credentialPolicyName, a.groupId);

    step = 'a device certificate is revoked, and the revocation removed';
    await go(page, '#/device-certificates', 'Device certificates');
    await page.getByLabel('Device certificate .pem or .cer file').setInputFiles(a.x509Pem);
    await page.getByLabel('Reason').fill('lost in the field');
    await page.getByRole('button', { name: 'Revoke', exact: true }).click();
    await page.getByRole('cell', { name: 'lost in the field' }).waitFor();
    seen.revokedRow = await page.locator('tr', { hasText: 'lost in the field' }).innerText();
    await snap(page, 'device-certificates');
    await page.getByRole('button', { name: `Remove revocation CN=${a.x509Id}` }).click();
    await page.getByText('Nothing revoked.').waitFor();
    seen.revocationRemoved = true;

    step = 'the other pages';
    for (const [hash, heading, name] of [
      ['#/certificates', 'Certificates', 'certificates'],
      ['#/linked-hubs', 'Linked IoT hubs', 'linked-hubs'],
      ['#/policies', 'Shared access policies', 'policies'],
    ]) {
      await go(page, hash, heading);
      await snap(page, name);
    }
    await page.setViewportSize({ width: 390, height: 844 });
    await go(page, '#/overview', 'Overview');
    await snap(page, 'overview-phone');
    await page.setViewportSize({ width: 1280, height: 900 });

    step = 'a read-only policy sees no write action and cannot post';
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await signIn(page, a.reader.name, a.reader.key);
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await go(page, '#/enrollments', 'Manage enrollments');
    await page.getByRole('link', { name: a.symmetricId }).waitFor();
    seen.readerAddButtons = await page.getByRole('link', { name: /Add/ }).count();
    seen.readerDeleteButtons = await page.getByRole('button', { name: /Delete/ }).count();
    await snap(page, 'read-only-enrollments');
    seen.readerWrite = await page.evaluate(async (id) => {
      const session = await (await fetch('/portal/api/session')).json();
      const r = await fetch(`/portal/api/service/enrollments/${encodeURIComponent(id)}`, {
        method: 'PUT',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf },
        body: JSON.stringify({ registrationId: id, attestation: { type: 'symmetricKey', symmetricKey: {} } }),
      });
      return { status: r.status, body: await r.json() };
    }, 'reader-made');
    seen.noCsrf = await page.evaluate(async () => (await fetch('/portal/api/service/enrollments/x', { method: 'DELETE' })).status);
    console.log(JSON.stringify({ ok: true, seen }));
  } catch (e) {
    try { await snap(page, 'failure'); } catch (_) { /* the page is gone */ }
    console.log(JSON.stringify({ ok: false, step, error: String(e && e.stack || e), seen }));
  } finally {
    await browser.close();
  }
}

main();
