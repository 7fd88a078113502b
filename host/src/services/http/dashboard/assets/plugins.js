// The plugins page: every plugin with its state, calls, errors and latency; a plugin's
// history with rollback and restart (#/plugins/NAME).

import { get, post, metrics, listOf } from './api.js';
import { h, fill, badge, head, when, seconds, notify } from './ui.js';

const REFRESH_MS = 5000;

export async function render(main, { args, signal }) {
  const selected = args[0] ?? null;
  const table = h('div', { id: 'plugins' });
  const detail = h('div', { id: 'plugin-detail' });
  fill(main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Plugins'),
      h('span', { class: 'muted' }, 'Refreshed every 5 s')),
    table, detail);

  const refresh = async () => {
    const [listed, text] = await Promise.all([get('/v1/plugins', { signal }), metrics()]);
    const files = listOf(listed, 'files', 'plugins');
    const names = files.map(nameOf).filter(Boolean);
    const histories = Object.fromEntries(await Promise.all(names.map(async (name) => {
      try {
        return [name, listOf(await get(`/v1/plugins/${encodeURIComponent(name)}/history`, { signal }), 'history')];
      } catch (err) {
        if (err.name === 'AbortError' || err.status === 401) throw err;
        return [name, []];
      }
    })));
    const latency = quantiles(text);
    fill(table, pluginTable(files, histories, latency, selected));
    if (selected) {
      fill(detail, historyPanel(selected, histories[selected], files.find((f) => nameOf(f) === selected), refresh, signal));
    }
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer));
}

function nameOf(file) {
  return file?.metadata?.name ?? file?.name ?? null;
}

/** serving, on probation, quarantined, rolled back, or not loaded. */
export function stateOf(file, history) {
  const serving = file.serving;
  if (!serving) return file.last_error ? 'failed' : 'not loaded';
  if (serving.worker && serving.worker.quarantined) return 'quarantined';
  if (serving.probation_until_unix_ms && serving.probation_until_unix_ms > Date.now()) return 'on probation';
  const entry = (history ?? []).find((e) => e.generation === serving.generation);
  if (entry && entry.rollback_of) return 'rolled back';
  return 'serving';
}

function pluginTable(files, histories, latency, selected) {
  if (files.length === 0) {
    return h('p', { class: 'card muted' }, 'No plugin is loaded: put a plugin file in the plugins directory.');
  }
  const rows = files.map((file) => {
    const name = nameOf(file) ?? file.path;
    const serving = file.serving ?? {};
    const state = stateOf(file, histories[name]);
    const q = latency[name] ?? {};
    return h('tr', { class: name === selected ? 'selected' : null, 'data-plugin': name },
      h('td', {}, h('a', { href: `#/plugins/${encodeURIComponent(name)}`, class: 'plugin-name' }, name),
        file.metadata?.description ? h('div', { class: 'muted small' }, file.metadata.description) : null,
        serving.worker?.quarantined ? h('div', { class: 'error small quarantine' }, serving.worker.quarantined) : null,
        file.last_error ? h('div', { class: `${file.serving ? 'warn' : 'error'} small` }, file.last_error) : null),
      h('td', {}, file.metadata?.version ?? '—'),
      h('td', { class: 'num' }, serving.generation ?? '—'),
      h('td', { class: 'state' }, badge(state)),
      h('td', { class: 'num calls' }, serving.calls ?? '—'),
      h('td', { class: 'num errors' }, serving.errors ?? '—'),
      h('td', { class: 'num p50' }, seconds(q.p50)),
      h('td', { class: 'num p99' }, seconds(q.p99)),
      h('td', { class: 'actions' },
        h('a', { class: 'button', href: `#/run?plugin=${encodeURIComponent(name)}` }, 'Run'),
        h('a', { class: 'button', href: `#/plugins/${encodeURIComponent(name)}` }, 'History')));
  });
  return h('table', { class: 'grid' },
    head(['Plugin', 'Version', 'Generation', 'State', 'Calls', 'Errors', 'p50', 'p99', ''],
      ['Generation', 'Calls', 'Errors', 'p50', 'p99']),
    h('tbody', {}, rows));
}

function historyPanel(name, history, file, refresh, signal) {
  if (!file) return h('p', { class: 'error' }, `No plugin named ${name} is loaded.`);
  const serving = file.serving?.generation;
  const act = async (button, path, body, done) => {
    button.disabled = true;
    try {
      const answer = await post(path, body, { signal });
      notify(answer?.message ?? done);
      await refresh();
    } catch (err) {
      if (err.name !== 'AbortError') notify(`${err.kind ?? 'error'}: ${err.message}`, 'error');
    } finally {
      button.disabled = false;
    }
  };
  const base = `/v1/plugins/${encodeURIComponent(name)}`;
  const restart = h('button', { type: 'button', class: 'restart' }, 'Restart');
  restart.addEventListener('click', () => act(restart, `${base}/restart`, {}, `${name} restarted`));
  const rows = (history ?? []).map((entry) => {
    let action = null;
    if (entry.generation === serving) {
      action = badge('serving');
    } else if (entry.kept) {
      action = h('button', { type: 'button', class: 'rollback', 'data-generation': entry.generation },
        `Roll back to ${entry.generation}`);
      action.addEventListener('click', () => act(action, `${base}/rollback`, { generation: entry.generation },
        `${name} rolled back to generation ${entry.generation}`));
    }
    return h('tr', { 'data-generation': entry.generation },
      h('td', { class: 'num' }, entry.generation),
      h('td', {}, entry.version),
      h('td', {}, when(entry.loaded_at_unix_ms)),
      h('td', {}, entry.retired_at_unix_ms ? when(entry.retired_at_unix_ms) : '—'),
      h('td', { class: 'num' }, entry.calls),
      h('td', { class: 'num' }, entry.errors),
      h('td', {}, entry.ended ? entry.ended.replace(/_/g, ' ') : '',
        entry.rollback_of ? h('div', { class: 'muted small' }, `rollback of ${entry.rollback_of}`) : null),
      h('td', { class: 'mono small' }, entry.sha256 ? entry.sha256.slice(0, 12) : ''),
      h('td', { class: 'actions' }, action));
  });
  return h('section', { class: 'card', id: 'history' },
    h('div', { class: 'page-head' }, h('h2', {}, `History of ${name}`), restart),
    h('table', { class: 'grid' },
      head(['Generation', 'Version', 'Loaded', 'Retired', 'Calls', 'Errors', 'Ended', 'SHA-256', ''],
        ['Generation', 'Calls', 'Errors']),
      h('tbody', {}, rows)));
}

/**
 * p50 and p99 per plugin from /metrics: the call-latency histogram's buckets, summed over
 * callbacks and outcomes, read as Prometheus' histogram_quantile does.
 */
export function quantiles(text) {
  const buckets = {};
  const scale = { value: 1 };
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)_bucket\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!m || !/call/.test(m[1]) || !/(duration|latency|seconds|time)/.test(m[1])) continue;
    if (/task/.test(m[1])) continue;
    const labels = Object.fromEntries([...m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (!labels.plugin || labels.le === undefined) continue;
    scale.value = /_ms$|millis/.test(m[1]) ? 1e-3 : /_us$|micros/.test(m[1]) ? 1e-6 : 1;
    const le = labels.le === '+Inf' ? Infinity : Number(labels.le);
    const per = (buckets[labels.plugin] ??= new Map());
    per.set(le, (per.get(le) ?? 0) + Number(m[3]));
  }
  const out = {};
  for (const [plugin, per] of Object.entries(buckets)) {
    const sorted = [...per.entries()].sort((a, b) => a[0] - b[0]);
    const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
    if (!total) continue;
    const at = (q) => {
      const rank = q * total;
      let prevLe = 0;
      let prevCount = 0;
      for (const [le, count] of sorted) {
        if (count >= rank) {
          if (le === Infinity) return prevLe * scale.value;
          const inBucket = count - prevCount;
          const fraction = inBucket > 0 ? (rank - prevCount) / inBucket : 1;
          return (prevLe + (le - prevLe) * fraction) * scale.value;
        }
        prevLe = le;
        prevCount = count;
      }
      return prevLe * scale.value;
    };
    out[plugin] = { p50: at(0.5), p99: at(0.99) };
  }
  return out;
}
