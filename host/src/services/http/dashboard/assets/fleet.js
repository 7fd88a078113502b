// The fleet page: the hosts that share this host's task store, where a fleet is configured
// (GET /v1/fleet answers 400 where it is not).

import { get } from './api.js';
import { h, fill, badge, head, when, pretty } from './ui.js';

export async function render(main, { signal }) {
  fill(main, h('h1', {}, 'Fleet'));
  let fleet;
  try {
    fleet = await get('/v1/fleet', { signal });
  } catch (err) {
    if (err.status === 400 || err.status === 404 || err.kind === 'not_configured') {
      main.append(h('p', { class: 'card muted', id: 'fleet-none' },
        `No fleet is configured: this host runs alone (${err.message}).`));
      return;
    }
    throw err;
  }
  const members = Array.isArray(fleet) ? fleet : (fleet?.hosts ?? fleet?.members ?? fleet?.nodes ?? null);
  if (!Array.isArray(members) || members.length === 0 || typeof members[0] !== 'object') {
    main.append(h('pre', { class: 'card result' }, pretty(fleet)));
    return;
  }
  if (members.every((m) => 'heartbeat_unix_ms' in m)) {
    main.append(hostsTable(members));
    return;
  }
  const columns = [...new Set(members.flatMap((m) => Object.keys(m)))].slice(0, 8);
  main.append(h('table', { class: 'grid', id: 'fleet' },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', {}, c.replace(/_/g, ' '))))),
    h('tbody', {}, members.map((m) => h('tr', {}, columns.map((c) => h('td', {}, cell(c, m[c]))))))));
  if (fleet && !Array.isArray(fleet)) {
    const rest = { ...fleet };
    delete rest.hosts; delete rest.members; delete rest.nodes;
    if (Object.keys(rest).length) main.append(h('pre', { class: 'card result' }, pretty(rest)));
  }
}

function cell(column, value) {
  if (column === 'state' || column === 'status') return badge(String(value));
  if (value !== null && typeof value === 'object') return JSON.stringify(value);
  return value ?? '—';
}

/** The fleet's hosts as `host fleet` shows them: alive or gone, and what each serves. */
function hostsTable(hosts) {
  return h('table', { class: 'grid', id: 'fleet' },
    head(['Host', 'State', 'PID', 'Version', 'Started', 'Last heartbeat', 'Plugins'], ['PID']),
    h('tbody', {}, hosts.map((host) => h('tr', { 'data-host': host.id },
      h('td', {}, h('div', { class: 'plugin-name' }, host.hostname), h('div', { class: 'muted small mono' }, host.id)),
      h('td', {}, host.alive ? badge('alive', 'serving') : badge('gone', 'failed')),
      h('td', { class: 'num' }, host.pid),
      h('td', {}, host.version),
      h('td', {}, when(host.started_unix_ms)),
      h('td', {}, when(host.heartbeat_unix_ms)),
      h('td', {}, (host.plugins ?? []).map((p) => h('div', {},
        `${p.name} · generation ${p.generation}`,
        p.sha256 ? h('span', { class: 'muted small mono' }, ` ${p.sha256.slice(0, 12)}`) : null)))))));
}
