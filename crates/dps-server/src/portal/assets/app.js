// The dps web portal: one page, no framework, no build step, nothing fetched from elsewhere.
// Every read and write goes through the server's portal API, which forwards it to the service
// or hub REST API signed with the session's policy: what a page may do is what that policy may
// do, and an error is the API's own message.
'use strict';

const state = { session: null, page: null };

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/** Builds an element: h('button', {class: 'primary', onclick: f}, 'Save'). */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

let ids = 0;
/** A labelled form control: field('Registration ID', h('input', {...})). */
function field(label, control, hint) {
  const id = control.id || (control.id = 'f' + (++ids));
  const inline = control.type === 'checkbox' || control.type === 'radio';
  const lab = h('label', { for: id }, label);
  return h('div', { class: inline ? 'field inline' : 'field' }, inline ? [control, lab] : [lab, control],
    hint ? h('span', { class: 'muted' }, hint) : null);
}

function text(name, value, attrs) {
  return h('input', Object.assign({ type: 'text', name, value: value ?? '', autocomplete: 'off' }, attrs || {}));
}

function select(name, options, value) {
  return h('select', { name }, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

function toast(message) {
  const box = document.getElementById('toast');
  const item = h('div', {}, message);
  box.append(item);
  setTimeout(() => item.remove(), 5000);
}

function errorBox(e) {
  return h('div', { class: 'error', role: 'alert' }, e.message || String(e));
}

function copyField(label, value) {
  const input = h('input', { type: 'text', readonly: true, value, id: 'f' + (++ids) });
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), h('div', { class: 'copy' }, input,
    h('button', { type: 'button', 'aria-label': 'Copy ' + label, onclick: async () => {
      try { await navigator.clipboard.writeText(value); } catch (_) { input.select(); document.execCommand('copy'); }
      toast('Copied ' + label);
    } }, 'Copy')));
}

function props(rows) {
  return h('dl', { class: 'props' }, rows.filter(r => r[1] !== undefined && r[1] !== null && r[1] !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function table(headers, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty || 'Nothing here yet.');
  return h('table', {}, h('thead', {}, h('tr', {}, headers.map(x => h('th', { scope: 'col', class: x.opt ? 'opt' : null }, x.label || x)))),
    h('tbody', {}, rows.map(r => h('tr', {}, r.map((c, i) => h('td', { class: headers[i].opt ? 'opt' : null }, c))))));
}

function when(t) {
  if (!t) return '';
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

function readFile(input) {
  return new Promise((resolve, reject) => {
    const f = input.files && input.files[0];
    if (!f) return resolve(null);
    const r = new FileReader();
    r.onload = () => {
      const bytes = new Uint8Array(r.result);
      const asText = new TextDecoder().decode(bytes);
      // A .cer may be DER: send it base64, as the API takes either.
      resolve(asText.includes('-----BEGIN') ? asText : btoa(String.fromCharCode(...bytes)));
    };
    r.onerror = () => reject(r.error);
    r.readAsArrayBuffer(f);
  });
}

// ---------------------------------------------------------------------------------------------
// The portal API
// ---------------------------------------------------------------------------------------------

/** Calls the service API (`where` = 'service') or a hub's (`where` = its host name). */
async function api(where, method, path, body, headers) {
  const base = where === 'service' ? '/portal/api/service' : '/portal/api/hub/' + encodeURIComponent(where);
  const init = { method, headers: Object.assign({ Accept: 'application/json' }, headers || {}), credentials: 'same-origin' };
  if (method !== 'GET' && state.session) init.headers['X-CSRF-Token'] = state.session.csrf;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(base + path, init);
  const raw = await resp.text();
  let json = null;
  try { json = raw ? JSON.parse(raw) : null; } catch (_) { json = null; }
  if (resp.status === 401 && json && json.signedIn === false) {
    state.session = null;
    render();
    throw new Error('Your session ended; sign in again.');
  }
  if (!resp.ok) {
    const message = (json && (json.message || json.Message)) || raw || resp.statusText;
    const code = json && (json.errorCode || json.ErrorCode);
    throw new Error(`${resp.status}${code ? ' (' + code + ')' : ''}: ${message}`);
  }
  return { json, headers: resp.headers, status: resp.status };
}

/** Every page of a query (`x-ms-continuation`), up to `most` items. */
async function queryAll(where, path, body, most) {
  let items = [], continuation = null;
  do {
    const headers = { 'x-ms-max-item-count': '100' };
    if (continuation) headers['x-ms-continuation'] = continuation;
    const r = await api(where, 'POST', path, body, headers);
    items = items.concat(r.json || []);
    continuation = r.headers.get('x-ms-continuation');
  } while (continuation && items.length < (most || 1000));
  return items;
}

function grant(where) {
  return state.session && state.session.grants.find(g => where === 'service' ? g.scope === 'service' : g.hub === where);
}

/** Whether the session's policy for `where` holds `right`. */
function can(where, right) {
  const g = grant(where);
  return !!g && g.rights.some(r => r.toLowerCase() === right.toLowerCase());
}

// ---------------------------------------------------------------------------------------------
// Sign-in, navigation, routing
// ---------------------------------------------------------------------------------------------

async function loadSession() {
  const r = await fetch('/portal/api/session', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  state.session = r.ok ? await r.json() : null;
}

function signIn() {
  const name = text('policyName', '', { autocomplete: 'username', required: true });
  const key = h('input', { type: 'password', name: 'key', autocomplete: 'current-password', required: true });
  const out = h('div', {});
  const form = h('form', { class: 'blade signin', onsubmit: async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    const r = await fetch('/portal/api/sign-in', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ policyName: name.value.trim(), key: key.value.trim() }),
    });
    const json = await r.json().catch(() => ({}));
    if (!r.ok) { out.append(errorBox(new Error(json.message || r.statusText))); return; }
    state.session = json;
    location.hash = '#/overview';
    render();
  } },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'With a shared access policy of the provisioning service or of an IoT hub: its name and its primary or secondary key. `dps portal-link` makes a one-time sign-in link.'),
  field('Policy name', name), field('Key', key), out,
  h('button', { class: 'primary', type: 'submit' }, 'Sign in'));
  return form;
}

function nav() {
  const s = state.session;
  const link = (hash, label) => h('a', { href: hash, 'aria-current': location.hash.startsWith(hash) ? 'page' : null }, label);
  const items = [];
  if (grant('service')) {
    items.push(h('h2', {}, 'Provisioning service'), link('#/overview', 'Overview'),
      link('#/enrollments', 'Manage enrollments'), link('#/registrations', 'Registration records'),
      link('#/certificates', 'Certificates'), link('#/linked-hubs', 'Linked IoT hubs'));
    if (can('service', 'ServiceConfig')) items.push(link('#/device-certificates', 'Device certificates'));
  }
  for (const hub of s.hubs.filter(x => grant(x.hostName))) {
    items.push(h('h2', {}, 'IoT hub ' + hub.hostName), link('#/hubs/' + encodeURIComponent(hub.hostName) + '/devices', 'Devices'));
  }
  items.push(h('h2', {}, 'Settings'), link('#/policies', 'Shared access policies'));
  document.getElementById('nav').replaceChildren(...items);
  document.getElementById('who').replaceChildren(
    s.grants.map(g => g.policy + (g.hub ? ' @ ' + g.hub : '')).join(', '),
    h('button', { type: 'button', onclick: async () => {
      await fetch('/portal/api/sign-out', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': s.csrf } });
      state.session = null; location.hash = ''; render();
    } }, 'Sign out'));
}

const routes = [
  [/^#\/overview$/, overview],
  [/^#\/enrollments$/, () => enrollments('individual')],
  [/^#\/enrollments\/(individual|group)$/, (kind) => enrollments(kind)],
  [/^#\/enrollments\/(individual|group)\/new$/, (kind) => enrollmentForm(kind, null)],
  [/^#\/enrollments\/(individual|group)\/(.+)$/, (kind, id) => enrollmentForm(kind, decodeURIComponent(id))],
  [/^#\/registrations$/, registrations],
  [/^#\/certificates$/, certificates],
  [/^#\/linked-hubs$/, linkedHubs],
  [/^#\/device-certificates$/, deviceCertificates],
  [/^#\/policies$/, policies],
  [/^#\/hubs\/([^/]+)\/devices$/, (hub) => devices(decodeURIComponent(hub))],
  [/^#\/hubs\/([^/]+)\/devices\/(.+)$/, (hub, id) => device(decodeURIComponent(hub), decodeURIComponent(id))],
];

async function render() {
  const main = document.getElementById('main');
  if (state.stop) { state.stop(); state.stop = null; }
  if (!state.session) {
    document.getElementById('nav').replaceChildren();
    document.getElementById('who').replaceChildren();
    main.replaceChildren(signIn());
    return;
  }
  if (!location.hash || location.hash === '#' || location.hash === '#/') {
    location.hash = grant('service') ? '#/overview' : '#/policies';
    return;
  }
  nav();
  const route = routes.find(([re]) => re.test(location.hash));
  main.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    const page = route ? await route[1](...location.hash.match(route[0]).slice(1)) : h('p', {}, 'No such page.');
    main.replaceChildren(page);
    const heading = main.querySelector('h1');
    if (heading) document.title = heading.textContent + ' — dps';
  } catch (e) {
    main.replaceChildren(h('h1', {}, 'Something went wrong'), errorBox(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------------------------------

async function overview() {
  const s = state.session;
  const page = h('div', {}, h('h1', {}, 'Overview'));
  page.append(props([
    ['ID Scope', s.idScope],
    ['Global device endpoint', s.provisioningHost],
    ['Service endpoint', s.serviceHost],
    ['Ports', `MQTT ${s.ports.mqtt}, HTTPS ${s.ports.https}, AMQP ${s.ports.amqp}`],
  ]));
  const counts = h('div', { class: 'cards' });
  page.append(h('h2', {}, 'Counts'), counts);
  const card = (label, n) => counts.append(h('div', { class: 'card' }, h('div', { class: 'n' }, n), h('div', { class: 'muted' }, label)));
  if (can('service', 'EnrollmentRead')) {
    const [ind, grp] = await Promise.all([
      queryAll('service', '/enrollments/query', { query: '*' }, 1000),
      queryAll('service', '/enrollmentGroups/query', { query: '*' }, 1000),
    ]);
    card('Individual enrollments', ind.length >= 1000 ? '1000+' : ind.length);
    card('Enrollment groups', grp.length >= 1000 ? '1000+' : grp.length);
  }
  for (const hub of s.hubs.filter(x => can(x.hostName, 'RegistryRead'))) {
    const st = (await api(hub.hostName, 'GET', '/statistics/devices')).json;
    card('Devices in ' + hub.hostName, st.totalDeviceCount);
    card('Connected to ' + hub.hostName, st.connectedDeviceCount ?? 0);
  }
  if (can('service', 'ServiceConfig')) {
    page.append(h('h2', {}, 'Registrations, last 24 hours'), await registrationChart());
    const keys = (await api('service', 'GET', '/keys')).json.value.filter(p => p.primaryKey);
    page.append(h('h2', {}, 'Connection strings'));
    for (const p of keys) {
      page.append(copyField(`Service connection string (${p.keyName})`,
        `HostName=${s.serviceHost};SharedAccessKeyName=${p.keyName};SharedAccessKey=${p.primaryKey}`));
    }
  }
  return page;
}

async function registrationChart() {
  const since = new Date(Date.now() - 24 * 3600 * 1000);
  let entries = [], continuation = null;
  do {
    const headers = continuation ? { 'x-ms-continuation': continuation } : {};
    const r = await api('service', 'GET', `/audit?kind=registration&top=1000&since=${encodeURIComponent(since.toISOString())}`, undefined, headers);
    entries = entries.concat(r.json);
    continuation = r.headers.get('x-ms-continuation');
  } while (continuation && entries.length < 20000);
  const buckets = Array.from({ length: 24 }, () => ({ assigned: 0, other: 0 }));
  for (const e of entries) {
    const i = Math.min(23, Math.floor((new Date(e.time) - since) / 3600000));
    if (i >= 0) buckets[i][e.outcome === 'assigned' ? 'assigned' : 'other']++;
  }
  const most = Math.max(1, ...buckets.map(b => b.assigned + b.other));
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 240 100');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const total = entries.length, assigned = entries.filter(e => e.outcome === 'assigned').length;
  svg.setAttribute('aria-label', `${total} registration attempts in the last 24 hours, ${assigned} assigned`);
  buckets.forEach((b, i) => {
    let y = 100;
    for (const kind of ['assigned', 'other']) {
      const hgt = b[kind] / most * 96;
      if (!hgt) continue;
      const r = document.createElementNS(ns, 'rect');
      r.setAttribute('x', i * 10 + 1); r.setAttribute('width', 8);
      r.setAttribute('y', y - hgt); r.setAttribute('height', hgt);
      r.setAttribute('class', kind);
      y -= hgt;
      svg.append(r);
    }
  });
  return h('div', { class: 'chart' }, svg,
    h('p', { class: 'muted' }, `${total} attempts: ${assigned} assigned (blue), ${total - assigned} failed or refused (red); one bar per hour.`));
}

// ---------------------------------------------------------------------------------------------
// Manage enrollments
// ---------------------------------------------------------------------------------------------

const MECHANISMS = [['symmetricKey', 'Symmetric Key'], ['x509', 'X.509'], ['tpm', 'TPM']];

async function enrollments(kind) {
  const group = kind === 'group';
  const path = group ? '/enrollmentGroups/query' : '/enrollments/query';
  const items = await queryAll('service', path, { query: '*' }, 5000);
  const idOf = e => group ? e.enrollmentGroupId : e.registrationId;
  const search = h('input', { type: 'search', name: 'search', placeholder: 'Filter by name' });
  const list = h('div', {});
  const PAGE = 50;
  let shown = PAGE;
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const hits = items.filter(e => idOf(e).toLowerCase().includes(q));
    const rows = hits.slice(0, shown).map(e => [
      h('a', { href: `#/enrollments/${kind}/${encodeURIComponent(idOf(e))}` }, idOf(e)),
      (MECHANISMS.find(m => m[0] === e.attestation.type) || [0, e.attestation.type])[1],
      e.provisioningStatus || 'enabled',
      (e.iotHubs || []).join(', ') || 'all linked hubs',
      can('service', 'EnrollmentWrite') ? h('button', { type: 'button', class: 'danger', 'aria-label': 'Delete ' + idOf(e), onclick: async () => {
        if (!confirm(`Delete ${idOf(e)}?`)) return;
        try {
          await api('service', 'DELETE', `/${group ? 'enrollmentGroups' : 'enrollments'}/${encodeURIComponent(idOf(e))}`, undefined, { 'If-Match': e.etag || '*' });
          toast('Deleted ' + idOf(e)); render();
        } catch (err) { list.prepend(errorBox(err)); }
      } }, 'Delete') : '',
    ]);
    list.replaceChildren(table([group ? 'Group name' : 'Registration ID', 'Mechanism', 'Status', { label: 'IoT hubs', opt: true }, ''], rows,
      q ? 'No enrollment matches.' : 'No enrollments yet.'),
    hits.length > shown ? h('button', { type: 'button', onclick: () => { shown += PAGE; draw(); } }, `Show more (${hits.length - shown} left)`) : '');
  };
  search.addEventListener('input', () => { shown = PAGE; draw(); });
  draw();
  const tab = (k, label) => h('button', { type: 'button', role: 'tab', 'aria-selected': String(k === kind), onclick: () => { location.hash = '#/enrollments/' + k; } }, label);
  return h('div', {}, h('h1', {}, 'Manage enrollments'),
    h('div', { class: 'bar' },
      can('service', 'EnrollmentWrite') ? h('a', { class: 'button primary', href: '#/enrollments/individual/new' }, 'Add individual enrollment') : '',
      can('service', 'EnrollmentWrite') ? h('a', { class: 'button primary', href: '#/enrollments/group/new' }, 'Add enrollment group') : ''),
    h('div', { class: 'tabs', role: 'tablist' }, tab('individual', 'Individual enrollments'), tab('group', 'Enrollment groups')),
    field('Search', search), list);
}

async function enrollmentForm(kind, id) {
  const group = kind === 'group';
  const collection = group ? 'enrollmentGroups' : 'enrollments';
  const existing = id ? (await api('service', 'GET', `/${collection}/${encodeURIComponent(id)}`)).json : null;
  if (existing) {
    // GET strips keys and certificates; the attestation mechanism has them (as in Azure), and
    // a save must send them back, or the service would make new keys.
    existing.attestation = (await api('service', 'POST', `/${collection}/${encodeURIComponent(id)}/attestationmechanism`)).json;
  }
  const writable = can('service', 'EnrollmentWrite');
  const att = existing ? existing.attestation : { type: 'symmetricKey' };
  const hubs = can('service', 'ServiceConfig') ? (await api('service', 'GET', '/linkedHubs')).json.value.map(x => x.name)
    : state.session.hubs.map(x => x.hostName);

  const mechanism = select('mechanism', MECHANISMS.filter(m => !(group && m[0] === 'tpm')), att.type);
  const rid = text('id', id || '', { required: true, readonly: !!existing });
  const auto = h('input', { type: 'checkbox', name: 'autoGenerate', checked: !existing });
  const primary = text('primaryKey', att.symmetricKey ? att.symmetricKey.primaryKey : '');
  const secondary = text('secondaryKey', att.symmetricKey ? att.symmetricKey.secondaryKey : '');
  const cert = h('input', { type: 'file', name: 'certificate', accept: '.pem,.cer,.crt' });
  const cert2 = h('input', { type: 'file', name: 'secondaryCertificate', accept: '.pem,.cer,.crt' });
  const ek = h('textarea', { name: 'endorsementKey' }, att.tpm ? att.tpm.endorsementKey || '' : '');
  const deviceId = text('deviceId', existing ? existing.deviceId : '');
  const hubBoxes = hubs.map(name => h('input', { type: 'checkbox', name: 'iotHub', value: name,
    checked: !existing || !existing.iotHubs || existing.iotHubs.length === 0 || existing.iotHubs.includes(name) }));
  const allocation = select('allocationPolicy', [['hashed', 'Evenly weighted distribution'], ['geoLatency', 'Lowest latency'], ['static', 'Static configuration']],
    existing ? existing.allocationPolicy || 'hashed' : 'hashed');
  const rp = existing && existing.reprovisionPolicy;
  const reprovision = select('reprovisionPolicy', [
    ['migrate', 'Re-provision and migrate data'], ['reset', 'Re-provision and reset to initial config'], ['never', 'Never re-provision']],
    !rp ? 'migrate' : !rp.updateHubAssignment ? 'never' : rp.migrateDeviceData === false ? 'reset' : 'migrate');
  const twin = h('textarea', { name: 'initialTwin' }, JSON.stringify(existing && existing.initialTwin ? existing.initialTwin : { tags: {}, properties: { desired: {} } }, null, 2));
  const enabled = select('provisioningStatus', [['enabled', 'Enable'], ['disabled', 'Disable']], existing ? existing.provisioningStatus || 'enabled' : 'enabled');
  const edge = h('input', { type: 'checkbox', name: 'iotEdge', checked: !!(existing && existing.capabilities && existing.capabilities.iotEdge) });
  // The policy that issues certificates to devices registering with a CSR; listing policies
  // needs ServiceConfig, so without it the name is typed.
  const issuing = existing ? existing.credentialPolicyName
    || (existing.clientCertificateIssuancePolicy && existing.clientCertificateIssuancePolicy.certificateAuthorityName) || '' : '';
  const policyNames = can('service', 'ServiceConfig') ? (await api('service', 'GET', '/credentialPolicies')).json.value.map(p => p.name) : null;
  const credentialPolicy = policyNames
    ? select('credentialPolicyName', [['', 'None']].concat(policyNames.concat(issuing && !policyNames.includes(issuing) ? [issuing] : []).map(n => [n, n])), issuing)
    : text('credentialPolicyName', issuing);
  const out = h('div', {});

  const symmetric = h('fieldset', {}, h('legend', {}, 'Symmetric key'), field('Auto-generate keys', auto), field('Primary key', primary), field('Secondary key', secondary));
  const x509 = h('fieldset', {}, h('legend', {}, group ? 'Signing certificate' : 'Device certificate'),
    field(group ? 'Primary certificate .pem or .cer file' : 'Primary certificate .pem or .cer file', cert, existing && att.x509 ? 'Leave empty to keep the current certificate.' : null),
    field('Secondary certificate .pem or .cer file', cert2));
  const tpm = h('fieldset', {}, h('legend', {}, 'TPM'), field('Endorsement key', ek));
  const showMechanism = () => {
    symmetric.hidden = mechanism.value !== 'symmetricKey';
    x509.hidden = mechanism.value !== 'x509';
    tpm.hidden = mechanism.value !== 'tpm';
    primary.disabled = secondary.disabled = auto.checked;
  };
  mechanism.addEventListener('change', showMechanism);
  auto.addEventListener('change', showMechanism);
  showMechanism();

  const form = h('form', { class: 'blade', onsubmit: async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    try {
      const body = existing ? Object.assign({}, existing) : {};
      delete body.registrationState;
      if (group) body.enrollmentGroupId = rid.value.trim(); else body.registrationId = rid.value.trim();
      const changedMechanism = !existing || mechanism.value !== att.type;
      if (mechanism.value === 'symmetricKey') {
        if (changedMechanism || !auto.checked) {
          body.attestation = { type: 'symmetricKey', symmetricKey: auto.checked ? {} : { primaryKey: primary.value.trim() || undefined, secondaryKey: secondary.value.trim() || undefined } };
        }
      } else if (mechanism.value === 'x509') {
        const [p, s] = [await readFile(cert), await readFile(cert2)];
        if (p || changedMechanism) {
          if (!p) throw new Error('Choose the primary certificate file.');
          const certs = { primary: { certificate: p } };
          if (s) certs.secondary = { certificate: s };
          body.attestation = { type: 'x509', x509: group ? { signingCertificates: certs } : { clientCertificates: certs } };
        }
      } else {
        body.attestation = { type: 'tpm', tpm: { endorsementKey: ek.value.trim() } };
      }
      if (!group) body.deviceId = deviceId.value.trim() || undefined;
      const chosen = hubBoxes.filter(b => b.checked).map(b => b.value);
      body.iotHubs = chosen.length === hubBoxes.length ? [] : chosen;
      body.allocationPolicy = allocation.value;
      body.reprovisionPolicy = { updateHubAssignment: reprovision.value !== 'never', migrateDeviceData: reprovision.value === 'migrate' };
      try { body.initialTwin = JSON.parse(twin.value || '{}'); } catch (e) { throw new Error('Initial device twin state: ' + e.message); }
      body.provisioningStatus = enabled.value;
      body.capabilities = { iotEdge: edge.checked };
      delete body.clientCertificateIssuancePolicy;
      body.credentialPolicyName = credentialPolicy.value.trim() || undefined;
      const target = encodeURIComponent(rid.value.trim());
      const saved = (await api('service', 'PUT', `/${collection}/${target}`, body, existing ? { 'If-Match': existing.etag } : {})).json;
      toast(`Saved ${group ? saved.enrollmentGroupId : saved.registrationId}`);
      location.hash = `#/enrollments/${kind}/${target}`;
    } catch (e) { out.append(errorBox(e)); }
  } },
  h('h1', {}, existing ? `${group ? 'Enrollment group' : 'Individual enrollment'} ${id}` : (group ? 'Add enrollment group' : 'Add individual enrollment')),
  field('Mechanism', mechanism),
  field(group ? 'Group name' : 'Registration ID', rid),
  symmetric, x509, tpm,
  group ? '' : field('IoT Hub Device ID', deviceId, 'Empty: the registration ID.'),
  h('fieldset', {}, h('legend', {}, 'Select the IoT hubs this device can be assigned to'), hubBoxes.map(b => field(b.value, b))),
  field('Select how you want to assign devices to hubs', allocation),
  field('Select how you want device data to be handled on re-provisioning', reprovision),
  field('Initial device twin state', twin),
  field('Enable entry', enabled),
  field('IoT Edge device', edge),
  field('Credential policy', credentialPolicy, 'Issues a certificate to a device that registers with a certificate signing request.'),
  out,
  writable ? h('button', { class: 'primary', type: 'submit' }, 'Save') : h('p', { class: 'muted' }, 'Your policy can read enrollments, not change them.'));
  if (!writable) for (const c of form.querySelectorAll('input, select, textarea')) c.disabled = true;
  return form;
}

// ---------------------------------------------------------------------------------------------
// Registration records
// ---------------------------------------------------------------------------------------------

async function registrations() {
  const [ind, grp] = await Promise.all([
    queryAll('service', '/enrollments/query', { query: '*' }, 500),
    queryAll('service', '/enrollmentGroups/query', { query: '*' }, 500),
  ]);
  const records = [];
  for (const g of grp) {
    for (const r of await queryAll('service', `/registrations/${encodeURIComponent(g.enrollmentGroupId)}/query`, { query: '*' }, 1000)) {
      records.push([r, 'group ' + g.enrollmentGroupId]);
    }
  }
  await Promise.all(ind.map(async e => {
    try { records.push([(await api('service', 'GET', `/registrations/${encodeURIComponent(e.registrationId)}`)).json, 'individual']); }
    catch (_) { /* never registered */ }
  }));
  records.sort((a, b) => a[0].registrationId.localeCompare(b[0].registrationId));
  const rows = records.map(([r, from]) => [r.registrationId, r.status, r.assignedHub || '', r.deviceId || '', when(r.lastUpdatedDateTimeUtc), from,
    can('service', 'RegistrationStatusWrite') ? h('button', { type: 'button', class: 'danger', 'aria-label': 'Delete registration record ' + r.registrationId, onclick: async () => {
      if (!confirm(`Delete the registration record of ${r.registrationId}?`)) return;
      await api('service', 'DELETE', `/registrations/${encodeURIComponent(r.registrationId)}`, undefined, { 'If-Match': r.etag || '*' });
      toast('Deleted'); render();
    } }, 'Delete') : '']);
  return h('div', {}, h('h1', {}, 'Registration records'),
    table(['Registration ID', 'Status', 'Assigned hub', 'Device ID', { label: 'Last updated', opt: true }, { label: 'Enrollment', opt: true }, ''], rows, 'No device has registered yet.'));
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

async function certificates() {
  const list = (await api('service', 'GET', '/certificates')).json || [];
  const out = h('div', {});
  const act = (label, f) => h('button', { type: 'button', onclick: async () => { out.replaceChildren(); try { await f(); } catch (e) { out.append(errorBox(e)); } } }, label);
  const rows = list.map(c => {
    const verifyFile = h('input', { type: 'file', accept: '.pem,.cer,.crt', 'aria-label': 'Verification certificate for ' + c.name });
    return [c.name, c.properties.subject, c.properties.isVerified ? h('span', { class: 'ok' }, 'Verified') : 'Unverified', when(c.properties.expiry),
      h('div', { class: 'bar' },
        c.properties.isVerified ? '' : act('Generate verification code', async () => {
          const r = (await api('service', 'POST', `/certificates/${encodeURIComponent(c.name)}/generateVerificationCode`, undefined, { 'If-Match': c.etag })).json;
          out.append(copyField('Verification code for ' + c.name, r.properties.verificationCode));
        }),
        c.properties.isVerified ? '' : verifyFile,
        c.properties.isVerified ? '' : act('Verify', async () => {
          const pem = await readFile(verifyFile);
          if (!pem) throw new Error('Choose the verification certificate file.');
          const fresh = (await api('service', 'GET', `/certificates/${encodeURIComponent(c.name)}`)).json;
          await api('service', 'POST', `/certificates/${encodeURIComponent(c.name)}/verify`, { certificate: pem }, { 'If-Match': fresh.etag });
          toast('Verified ' + c.name); render();
        }),
        act('Delete', async () => {
          if (!confirm(`Delete ${c.name}?`)) return;
          await api('service', 'DELETE', `/certificates/${encodeURIComponent(c.name)}`, undefined, { 'If-Match': c.etag });
          render();
        }))];
  });
  const name = text('certificateName', '', { required: true });
  const file = h('input', { type: 'file', name: 'certificateFile', accept: '.pem,.cer,.crt', required: true });
  const verified = h('input', { type: 'checkbox', name: 'isVerified' });
  const upload = h('form', { class: 'blade', onsubmit: async (ev) => {
    ev.preventDefault(); out.replaceChildren();
    try {
      await api('service', 'PUT', `/certificates/${encodeURIComponent(name.value.trim())}`, { certificate: await readFile(file), isVerified: verified.checked });
      toast('Uploaded ' + name.value); render();
    } catch (e) { out.append(errorBox(e)); }
  } }, h('h2', {}, 'Add certificate'), field('Certificate name', name), field('Certificate .pem or .cer file', file),
  field('Set certificate status to verified on upload', verified), h('button', { class: 'primary', type: 'submit' }, 'Save'));
  return h('div', {}, h('h1', {}, 'Certificates'), out,
    table(['Name', { label: 'Subject', opt: true }, 'Status', { label: 'Expiry', opt: true }, ''], rows, 'No CA certificate yet.'), upload);
}

// ---------------------------------------------------------------------------------------------
// Device certificates: credential policies (issuing at registration and renewal) and revocations
// ---------------------------------------------------------------------------------------------

const KEY_TYPES = [['P-256', 'ECDSA P-256'], ['P-384', 'ECDSA P-384'], ['RSA-2048', 'RSA 2048']];

async function deviceCertificates() {
  const policies = (await api('service', 'GET', '/credentialPolicies')).json.value;
  const revoked = [];
  let continuation = null;
  do {
    const r = await api('service', 'GET', '/revocations', undefined, continuation ? { 'x-ms-continuation': continuation } : {});
    revoked.push(...r.json.value);
    continuation = r.headers.get('x-ms-continuation');
  } while (continuation && revoked.length < 5000);
  const out = h('div', {});
  const act = (label, aria, f) => h('button', { type: 'button', class: 'danger', 'aria-label': aria, onclick: async () => {
    out.replaceChildren();
    try { await f(); } catch (e) { out.append(errorBox(e)); }
  } }, label);
  const submit = (f) => async (ev) => {
    ev.preventDefault(); out.replaceChildren();
    try { await f(); } catch (e) { out.append(errorBox(e)); }
  };

  const policyRows = policies.map(p => [p.name, p.keyType, String(p.validityInDays),
    p.certificateAuthority.kind === 'brought' ? 'Brought' : 'Built-in', p.certificateAuthority.subject, when(p.certificateAuthority.notAfterUtc),
    act('Delete', 'Delete credential policy ' + p.name, async () => {
      if (!confirm(`Delete credential policy ${p.name}?`)) return;
      await api('service', 'DELETE', `/credentialPolicies/${encodeURIComponent(p.name)}`, undefined, { 'If-Match': p.etag });
      toast('Deleted ' + p.name); render();
    })]);
  const name = text('policyName', '', { required: true });
  const keyType = select('keyType', KEY_TYPES, 'P-256');
  const days = h('input', { type: 'number', name: 'validityInDays', min: 1, max: 3650, value: 30 });
  const caCert = h('input', { type: 'file', name: 'caCertificate', accept: '.pem,.crt' });
  const caKey = h('input', { type: 'file', name: 'caKey', accept: '.pem,.key' });
  const addPolicy = h('form', { class: 'blade', onsubmit: submit(async () => {
    const body = { keyType: keyType.value, validityInDays: Number(days.value) };
    const [cert, key] = [await readFile(caCert), await readFile(caKey)];
    if (cert || key) {
      if (!cert || !key) throw new Error('A brought CA needs both its certificate chain and its PKCS#8 key.');
      body.certificateAuthority = { certificates: cert, privateKey: key };
      delete body.keyType;
    }
    await api('service', 'PUT', `/credentialPolicies/${encodeURIComponent(name.value.trim())}`, body);
    toast('Created ' + name.value.trim()); render();
  }) }, h('h2', {}, 'Add credential policy'), field('Policy name', name), field('Key type', keyType),
  field('Validity of issued certificates (days)', days),
  field('Issuing CA certificate chain .pem (optional)', caCert, 'Empty: the server makes a root and an issuing CA for the policy.'),
  field('Issuing CA private key .pem (PKCS#8)', caKey),
  h('button', { class: 'primary', type: 'submit' }, 'Save'));

  // Thumbprints are 64 digits: shown by their ends, whole on hover.
  const short = (hex) => hex ? h('span', { title: hex }, hex.length > 16 ? `${hex.slice(0, 8)}…${hex.slice(-6)}` : hex) : '';
  const revokedRows = revoked.map(r => [r.subject || '', r.issuer || '', short(r.serialNumber), short(r.sha256Thumbprint), r.source, r.reason || '', when(r.revokedDateTimeUtc),
    act('Remove', 'Remove revocation ' + (r.subject || r.id), async () => {
      await api('service', 'DELETE', `/revocations/${encodeURIComponent(r.id)}`);
      toast('Removed'); render();
    })]);
  const certFile = h('input', { type: 'file', name: 'revokedCertificate', accept: '.pem,.cer,.crt' });
  const thumbprint = text('sha256Thumbprint', '');
  const reason = text('reason', '');
  const revoke = h('form', { class: 'blade', onsubmit: submit(async () => {
    const cert = await readFile(certFile);
    const body = cert ? { certificate: cert } : { sha256Thumbprint: thumbprint.value.trim() };
    if (!cert && !body.sha256Thumbprint) throw new Error('Choose the certificate file or give its SHA-256 thumbprint.');
    if (reason.value.trim()) body.reason = reason.value.trim();
    const r = (await api('service', 'POST', '/revocations', body)).json;
    toast('Revoked ' + (r.subject || r.sha256Thumbprint)); render();
  }) }, h('h2', {}, 'Revoke a certificate'), field('Device certificate .pem or .cer file', certFile),
  field('Or its SHA-256 thumbprint', thumbprint), field('Reason', reason), h('button', { class: 'primary', type: 'submit' }, 'Revoke'));
  const crlFile = h('input', { type: 'file', name: 'crl', accept: '.pem,.crl' });
  const importCrl = h('form', { class: 'blade', onsubmit: submit(async () => {
    const crl = await readFile(crlFile);
    if (!crl) throw new Error('Choose the revocation list file.');
    const r = (await api('service', 'POST', '/crls', { crl })).json;
    toast(`Imported ${r.revoked} revoked certificates of ${r.issuer}`); render();
  }) }, h('h2', {}, 'Import a revocation list'), field('CRL .pem or .crl file (signed by a CA this service knows)', crlFile),
  h('button', { class: 'primary', type: 'submit' }, 'Import'));

  return h('div', {}, h('h1', {}, 'Device certificates'), out,
    h('h2', {}, 'Credential policies'),
    table(['Name', 'Key type', 'Validity (days)', { label: 'CA', opt: true }, { label: 'CA subject', opt: true }, { label: 'CA expiry', opt: true }, ''], policyRows, 'No credential policy yet.'),
    addPolicy,
    h('h2', {}, 'Revoked certificates'),
    table(['Subject', { label: 'Issuer', opt: true }, { label: 'Serial', opt: true }, { label: 'SHA-256 thumbprint', opt: true }, 'Source', 'Reason', { label: 'Revoked', opt: true }, ''], revokedRows, 'Nothing revoked.'),
    revoke, importCrl);
}

// ---------------------------------------------------------------------------------------------
// Linked IoT hubs
// ---------------------------------------------------------------------------------------------

async function linkedHubs() {
  const list = (await api('service', 'GET', '/linkedHubs')).json.value;
  const out = h('div', {});
  const rows = list.map(x => [x.name, String(x.allocationWeight ?? 1), x.applyAllocationPolicy === false ? 'No' : 'Yes', x.location || '',
    h('button', { type: 'button', class: 'danger', 'aria-label': 'Unlink ' + x.name, onclick: async () => {
      if (!confirm(`Unlink ${x.name}?`)) return;
      try { await api('service', 'DELETE', `/linkedHubs/${encodeURIComponent(x.name)}`); render(); } catch (e) { out.append(errorBox(e)); }
    } }, 'Delete')]);
  const cs = text('connectionString', '', { required: true });
  const weight = h('input', { type: 'number', name: 'allocationWeight', min: 1, max: 1000, value: 1 });
  const apply = h('input', { type: 'checkbox', name: 'applyAllocationPolicy', checked: true });
  const form = h('form', { class: 'blade', onsubmit: async (ev) => {
    ev.preventDefault(); out.replaceChildren();
    try {
      const host = (cs.value.match(/HostName=([^;]+)/i) || [])[1];
      if (!host) throw new Error('The connection string names no HostName.');
      await api('service', 'PUT', `/linkedHubs/${encodeURIComponent(host)}`, { connectionString: cs.value.trim(), allocationWeight: Number(weight.value), applyAllocationPolicy: apply.checked });
      toast('Linked ' + host); render();
    } catch (e) { out.append(errorBox(e)); }
  } }, h('h2', {}, 'Add link to IoT hub'), field('IoT hub connection string (a policy with RegistryWrite)', cs),
  field('Allocation weight', weight), field('Apply allocation policy', apply), h('button', { class: 'primary', type: 'submit' }, 'Save'));
  return h('div', {}, h('h1', {}, 'Linked IoT hubs'), out,
    table(['Name', 'Allocation weight', 'Apply allocation policy', { label: 'Location', opt: true }, ''], rows, 'No hub linked.'),
    can('service', 'ServiceConfig') ? form : '');
}

// ---------------------------------------------------------------------------------------------
// Shared access policies
// ---------------------------------------------------------------------------------------------

const RIGHTS = {
  service: ['ServiceConfig', 'EnrollmentRead', 'EnrollmentWrite', 'DeviceConnect', 'RegistrationStatusRead', 'RegistrationStatusWrite'],
  hub: ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect'],
};

async function policies() {
  const page = h('div', {}, h('h1', {}, 'Shared access policies'));
  const sets = [];
  if (can('service', 'ServiceConfig')) sets.push(['service', 'Provisioning service', '/keys', state.session.serviceHost]);
  for (const hub of state.session.hubs) if (can(hub.hostName, 'RegistryWrite')) sets.push([hub.hostName, 'IoT hub ' + hub.hostName, '/iotHubKeys', hub.hostName]);
  if (!sets.length) page.append(h('p', { class: 'muted' }, 'Your policy cannot manage policies (that takes ServiceConfig, or RegistryWrite on a hub).'));
  for (const [where, title, path, host] of sets) {
    const out = h('div', {});
    const list = (await api(where, 'GET', path)).json.value;
    const rows = list.map(p => [p.keyName, p.rights,
      p.primaryKey ? h('details', {}, h('summary', {}, 'Keys'), copyField('Primary key of ' + p.keyName, p.primaryKey), copyField('Secondary key of ' + p.keyName, p.secondaryKey),
        copyField('Connection string of ' + p.keyName, `HostName=${host};SharedAccessKeyName=${p.keyName};SharedAccessKey=${p.primaryKey}`)) : h('span', { class: 'muted' }, 'hidden'),
      h('div', { class: 'bar' }, ['primary', 'secondary'].map(k => h('button', { type: 'button', 'aria-label': `Regenerate ${k} key of ${p.keyName}`, onclick: async () => {
        out.replaceChildren();
        try { await api(where, 'POST', `${path}/${encodeURIComponent(p.keyName)}/regenerateKey`, { keyType: k }); toast(`New ${k} key for ${p.keyName}`); render(); }
        catch (e) { out.append(errorBox(e)); }
      } }, `Regenerate ${k} key`)),
      h('button', { type: 'button', class: 'danger', 'aria-label': 'Delete policy ' + p.keyName, onclick: async () => {
        if (!confirm(`Delete ${p.keyName}?`)) return;
        out.replaceChildren();
        try { await api(where, 'DELETE', `${path}/${encodeURIComponent(p.keyName)}`); render(); } catch (e) { out.append(errorBox(e)); }
      } }, 'Delete'))]);
    const name = text('policyName', '', { required: true });
    const boxes = RIGHTS[where === 'service' ? 'service' : 'hub'].map(r => h('input', { type: 'checkbox', name: 'right', value: r }));
    const form = h('form', { class: 'blade', onsubmit: async (ev) => {
      ev.preventDefault(); out.replaceChildren();
      try {
        const rights = boxes.filter(b => b.checked).map(b => b.value);
        if (!rights.length) throw new Error('Choose at least one right.');
        await api(where, 'PUT', `${path}/${encodeURIComponent(name.value.trim())}`, { keyName: name.value.trim(), rights: rights.join(', ') });
        toast('Created ' + name.value); render();
      } catch (e) { out.append(errorBox(e)); }
    } }, h('h3', {}, 'Add shared access policy'), field('Shared access policy name', name),
    h('fieldset', {}, h('legend', {}, 'Permissions'), boxes.map(b => field(b.value, b))), h('button', { class: 'primary', type: 'submit' }, 'Create'));
    page.append(h('h2', {}, title), out, table(['Policy', 'Permissions', 'Keys', ''], rows), form);
  }
  return page;
}

// ---------------------------------------------------------------------------------------------
// Devices of an embedded hub
// ---------------------------------------------------------------------------------------------

async function devices(hub) {
  const search = h('input', { type: 'search', name: 'deviceSearch', placeholder: 'Device ID starts with…' });
  const list = h('div', {});
  let continuation = null, rows = [];
  const load = async (more) => {
    const q = search.value.trim().replace(/'/g, "''");
    const query = q ? `SELECT * FROM devices WHERE STARTSWITH(deviceId, '${q}')` : 'SELECT * FROM devices';
    const headers = { 'x-ms-max-item-count': '50' };
    if (more && continuation) headers['x-ms-continuation'] = continuation;
    try {
      const r = await api(hub, 'POST', '/devices/query', { query }, headers);
      continuation = r.headers.get('x-ms-continuation');
      const page = (r.json || []).map(t => [h('a', { href: `#/hubs/${encodeURIComponent(hub)}/devices/${encodeURIComponent(t.deviceId)}` }, t.deviceId),
        t.status, t.connectionState, t.authenticationType || '', when(t.lastActivityTime)]);
      rows = more ? rows.concat(page) : page;
      list.replaceChildren(table(['Device ID', 'Status', 'Connection state', { label: 'Authentication', opt: true }, { label: 'Last activity', opt: true }], rows, 'No device.'),
        continuation ? h('button', { type: 'button', onclick: () => load(true) }, 'Load more') : '');
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  search.addEventListener('change', () => load(false));
  await load(false);
  return h('div', {}, h('h1', {}, 'Devices of ' + hub), h('form', { class: 'bar', onsubmit: (ev) => { ev.preventDefault(); load(false); } }, field('Search devices', search), h('button', { type: 'submit' }, 'Search')), list);
}

async function device(hub, id) {
  const path = encodeURIComponent(id);
  const d = (await api(hub, 'GET', `/devices/${path}`)).json;
  const page = h('div', {}, h('h1', {}, 'Device ' + id));
  const out = h('div', {});
  page.append(out, props([
    ['Device ID', d.deviceId], ['Status', d.status], ['Status reason', d.statusReason], ['Connection state', d.connectionState],
    ['Authentication', d.authentication && d.authentication.type], ['Last activity', when(d.lastActivityTime)],
    ['Cloud-to-device messages waiting', String(d.cloudToDeviceMessageCount ?? 0)],
  ]));
  const guard = (f) => async (ev) => { if (ev) ev.preventDefault(); out.replaceChildren(); try { await f(); } catch (e) { out.append(errorBox(e)); } };
  if (can(hub, 'RegistryWrite')) {
    const disabled = d.status === 'disabled';
    page.append(h('div', { class: 'bar' },
      h('button', { type: 'button', onclick: guard(async () => {
        await api(hub, 'PUT', `/devices/${path}`, Object.assign({}, d, { status: disabled ? 'enabled' : 'disabled' }), { 'If-Match': d.etag });
        toast(disabled ? 'Enabled' : 'Disabled'); render();
      }) }, disabled ? 'Enable device' : 'Disable device'),
      can('service', 'EnrollmentWrite') ? h('button', { type: 'button', class: 'danger', onclick: guard(async () => {
        if (!confirm(`Revoke access for ${id}: disable its enrollment and its device?`)) return;
        let enrollment = null;
        try { enrollment = (await api('service', 'GET', `/enrollments/${path}`)).json; } catch (_) { enrollment = null; }
        if (enrollment) {
          enrollment.provisioningStatus = 'disabled';
          await api('service', 'PUT', `/enrollments/${path}`, enrollment, { 'If-Match': enrollment.etag });
        }
        const fresh = (await api(hub, 'GET', `/devices/${path}`)).json;
        await api(hub, 'PUT', `/devices/${path}`, Object.assign({}, fresh, { status: 'disabled', statusReason: 'access revoked' }), { 'If-Match': fresh.etag });
        toast(enrollment ? 'Revoked: enrollment and device disabled' : 'Revoked: device disabled (no individual enrollment of that id)'); render();
      }) }, 'Revoke access') : ''));
  }
  // Twin
  const t = (await api(hub, 'GET', `/twins/${path}`)).json;
  const editable = { tags: t.tags || {}, properties: { desired: Object.fromEntries(Object.entries((t.properties || {}).desired || {}).filter(([k]) => !k.startsWith('$'))) } };
  const twinText = h('textarea', { name: 'twin', rows: 12 }, JSON.stringify(editable, null, 2));
  page.append(h('h2', {}, 'Device twin'),
    h('form', { class: 'blade', onsubmit: guard(async () => {
      let patch;
      try { patch = JSON.parse(twinText.value); } catch (e) { throw new Error('Twin: ' + e.message); }
      const saved = (await api(hub, 'PATCH', `/twins/${path}`, patch, { 'If-Match': t.etag || '*' })).json;
      toast('Twin saved (version ' + saved.version + ')'); render();
    }) }, field('Tags and desired properties (JSON)', twinText),
    h('details', {}, h('summary', {}, 'Reported properties'), h('pre', {}, JSON.stringify((t.properties || {}).reported || {}, null, 2))),
    can(hub, 'RegistryWrite') ? h('button', { type: 'submit', class: 'primary' }, 'Save twin') : ''));
  if (can(hub, 'ServiceConnect')) {
    // Direct method
    const method = text('methodName', '', { required: true });
    const payload = h('textarea', { name: 'methodPayload', rows: 4 }, '{}');
    const timeout = h('input', { type: 'number', name: 'responseTimeout', min: 5, max: 300, value: 30 });
    const result = h('pre', { 'aria-live': 'polite' });
    page.append(h('h2', {}, 'Direct method'), h('form', { class: 'blade', onsubmit: guard(async () => {
      let p; try { p = JSON.parse(payload.value || 'null'); } catch (e) { throw new Error('Payload: ' + e.message); }
      const r = (await api(hub, 'POST', `/twins/${path}/methods`, { methodName: method.value.trim(), payload: p, responseTimeoutInSeconds: Number(timeout.value), connectTimeoutInSeconds: 0 })).json;
      result.textContent = `status ${r.status}\n` + JSON.stringify(r.payload, null, 2);
    }) }, field('Method name', method), field('Payload (JSON)', payload), field('Response timeout (seconds)', timeout), h('button', { type: 'submit', class: 'primary' }, 'Invoke method'), result));
    // Message to device
    const body = h('textarea', { name: 'messageBody', rows: 4 });
    const propsText = text('messageProperties', '', { placeholder: 'key=value; other=value' });
    page.append(h('h2', {}, 'Message to device'), h('form', { class: 'blade', onsubmit: guard(async () => {
      const properties = {};
      for (const pair of propsText.value.split(';').map(x => x.trim()).filter(Boolean)) {
        const i = pair.indexOf('=');
        if (i < 1) throw new Error(`Property '${pair}' is not key=value.`);
        properties[pair.slice(0, i).trim()] = pair.slice(i + 1).trim();
      }
      await api(hub, 'POST', `/devices/${path}/messages/deviceBound`, { body: body.value, properties });
      toast('Message sent to ' + id); body.value = '';
    }) }, field('Message body', body), field('Message properties', propsText), h('button', { type: 'submit', class: 'primary' }, 'Send message')));
    // Live telemetry
    const stream = h('pre', { class: 'stream', 'aria-live': 'off', tabindex: 0 });
    const start = h('button', { type: 'button' }, 'Start');
    let controller = null;
    const stop = () => { if (controller) { controller.abort(); controller = null; start.textContent = 'Start'; } };
    state.stop = stop;
    start.addEventListener('click', async () => {
      if (controller) return stop();
      controller = new AbortController();
      start.textContent = 'Stop';
      try {
        const resp = await fetch(`/portal/api/hub/${encodeURIComponent(hub)}/messages/events?deviceId=${path}&from-sequence=0`,
          { credentials: 'same-origin', signal: controller.signal, headers: { Accept: 'application/x-ndjson' } });
        if (!resp.ok) throw new Error(`${resp.status}: ${await resp.text()}`);
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buffer.indexOf('\n')) >= 0) {
            const line = buffer.slice(0, nl).trim();
            buffer = buffer.slice(nl + 1);
            if (!line) continue;
            const ev = JSON.parse(line).event || {};
            stream.textContent += `${new Date().toLocaleTimeString()}  ${typeof ev.payload === 'string' ? ev.payload : JSON.stringify(ev.payload)}\n`;
            stream.scrollTop = stream.scrollHeight;
          }
        }
      } catch (e) { if (e.name !== 'AbortError') out.append(errorBox(e)); }
      stop();
    });
    page.append(h('h2', {}, 'Telemetry'), h('div', { class: 'bar' }, start, h('span', { class: 'muted' }, 'Messages the device sent, retained ones first.')), stream);
  }
  return page;
}

// ---------------------------------------------------------------------------------------------

window.addEventListener('hashchange', render);
window.addEventListener('DOMContentLoaded', async () => {
  await loadSession();
  render();
});
