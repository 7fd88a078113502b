// The fleet page: the hosts that share this host's task store, where a fleet is configured
// (GET /v1/fleet answers 400 where it is not).

import { get } from './api.js';
import { h, fill, badge, pretty } from './ui.js';

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
