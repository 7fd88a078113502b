// The tasks page: a filtered list (#/tasks?status=&plugin=), and one task (#/tasks/ID) with
// its logs and follow-ups as a tree, kept current by its event stream, with cancel and retry.

import { get, post, events, listOf } from './api.js';
import { h, fill, badge, head, when, pretty, errorBox, logList, notify } from './ui.js';

const STATUSES = ['queued', 'running', 'success', 'failed', 'bad', 'skipped', 'refused', 'cancelled'];
const ACTIVE = new Set(['queued', 'running']);
const LIST_REFRESH_MS = 3000;
const PAGE = 50;
/** The live events a task's page keeps on screen (the oldest go first). */
const MAX_EVENTS_SHOWN = 500;

export async function render(main, { args, params, signal }) {
  if (args[0]) return detail(main, args[0], signal);
  return list(main, params, signal);
}

async function list(main, params, signal) {
  const status = h('select', { id: 'filter-status', name: 'status' },
    h('option', { value: '' }, 'any status'),
    STATUSES.map((s) => h('option', { value: s }, s)));
  status.value = params.get('status') ?? '';
  const plugin = h('input', {
    id: 'filter-plugin', name: 'plugin', placeholder: 'any plugin', value: params.get('plugin') ?? '',
  });
  const form = h('form', { class: 'filters' },
    h('label', {}, 'Status', status), h('label', {}, 'Plugin', plugin),
    h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (status.value) query.set('status', status.value);
    if (plugin.value.trim()) query.set('plugin', plugin.value.trim());
    location.hash = `#/tasks${query.size ? `?${query}` : ''}`;
  });
  status.addEventListener('change', () => form.requestSubmit());

  const body = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Older tasks');
  fill(main, h('div', { class: 'page-head' }, h('h1', {}, 'Tasks'), form),
    h('table', { class: 'grid', id: 'tasks' },
      head(['ID', 'Plugin', 'Callback', 'Status', 'Attempts', 'Created', 'Finished'], ['ID', 'Attempts']),
      body),
    h('div', { class: 'buttons' }, more));

  const query = (cursor) => {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status.value) q.set('status', status.value);
    if (plugin.value.trim()) q.set('plugin', plugin.value.trim());
    if (cursor) q.set('cursor', String(cursor));
    return `/v1/tasks?${q}`;
  };
  let older = [];
  let next = null;
  const rows = (tasks) => tasks.map((t) => {
    const row = h('tr', { class: 'link', 'data-task': t.id },
      h('td', { class: 'num' }, h('a', { href: `#/tasks/${t.id}` }, t.id)),
      h('td', {}, t.plugin), h('td', {}, t.callback), h('td', {}, badge(t.status)),
      h('td', { class: 'num' }, `${t.attempts}/${t.max_attempts}`),
      h('td', {}, when(t.created_unix_ms)), h('td', {}, when(t.finished_unix_ms)));
    row.addEventListener('click', () => { location.hash = `#/tasks/${t.id}`; });
    return row;
  });
  const refresh = async () => {
    const page = await get(query(null), { signal });
    const tasks = listOf(page, 'tasks');
    if (older.length === 0) next = page?.next ?? null;
    const seen = new Set(tasks.map((t) => t.id));
    fill(body, rows([...tasks, ...older.filter((t) => !seen.has(t.id))]));
    if (body.children.length === 0) {
      fill(body, h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No task matches.')));
    }
    more.hidden = !next;
  };
  more.addEventListener('click', async () => {
    const page = await get(query(next), { signal });
    older = older.concat(listOf(page, 'tasks'));
    next = page?.next ?? null;
    await refresh();
  });
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), LIST_REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer));
}

async function detail(main, id, signal) {
  // The head (status, reason, buttons) stays while the body is redrawn on each change, so
  // a reason being typed is kept.
  const status = h('span', { id: 'task-status' });
  const reason = h('input', { id: 'task-reason', placeholder: 'reason (recorded)' });
  const cancel = h('button', { type: 'button', id: 'task-cancel', hidden: true }, 'Cancel');
  const retry = h('button', { type: 'button', id: 'task-retry', hidden: true }, 'Retry');
  const view = h('div', { id: 'task-view' });
  const side = h('div', { id: 'task-side' });
  const live = h('ol', { class: 'events', id: 'task-events' });
  const liveState = h('span', { class: 'muted small', id: 'task-live' }, 'connecting…');
  fill(main,
    h('p', {}, h('a', { href: '#/tasks' }, '← All tasks')),
    h('div', { class: 'page-head' },
      h('h1', {}, `Task ${id} `, status),
      h('div', { class: 'buttons' }, reason, cancel, retry)),
    view,
    h('div', { class: 'split' },
      side,
      h('section', { class: 'card' },
        h('div', { class: 'page-head' }, h('h3', {}, 'Live events'), liveState), live)));

  let tree = null;
  const load = async () => {
    const answer = await get(`/v1/tasks/${encodeURIComponent(id)}`, { signal });
    tree = answer && answer.task && answer.task.task ? answer.task : answer;
    const active = ACTIVE.has(tree.task.status);
    fill(status, badge(tree.task.status));
    cancel.hidden = !active;
    retry.hidden = active;
    fill(view, taskView(tree));
    fill(side, taskSide(tree));
    return tree;
  };
  const act = (button, what) => button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
      const answer = await post(`/v1/tasks/${encodeURIComponent(id)}/${what}`, body, { signal });
      notify(answer?.message ?? `task ${id}: ${what} asked`);
      reason.value = '';
      await load();
      if (what === 'retry') following = following.then(() => follow(id, signal, liveState, live, soon, load, () => tree));
    } catch (err) {
      if (err.name !== 'AbortError') notify(`${err.kind ?? 'error'}: ${err.message}`, 'error');
    } finally {
      button.disabled = false;
    }
  });
  act(cancel, 'cancel');
  act(retry, 'retry');
  await load();

  let pending = null;
  const soon = () => {
    clearTimeout(pending);
    pending = setTimeout(() => load().catch(() => {}), 100);
  };
  signal.addEventListener('abort', () => clearTimeout(pending));
  let following = follow(id, signal, liveState, live, soon, load, () => tree).catch(() => {});
}

/** Follows the task's event stream until the task and its follow-ups have ended. */
async function follow(id, signal, liveState, live, changed, load, current) {
  let lastId = null;
  let delay = 500;
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  while (!signal.aborted) {
    if (!ACTIVE.has(current()?.task?.status)) {
      if (!anyActive(current())) {
        fill(liveState, 'ended');
        if (live.children.length === 0) {
          live.append(h('li', { class: 'muted' }, 'It had ended when this page opened.'));
        }
        return;
      }
      // The task ended but follow-ups still run: their status comes from polling.
      fill(liveState, 'follow-ups running (polling)');
      await wait(2000);
      await load().catch(() => {});
      continue;
    }
    let heard = 0;
    try {
      fill(liveState, badge('live', 'running'));
      lastId = await events(`/v1/tasks/${encodeURIComponent(id)}/events`, {
        lastEventId: lastId,
        signal,
        onEvent: (event) => {
          heard += 1;
          if (event.id) lastId = event.id;
          live.append(eventLine(event));
          while (live.children.length > MAX_EVENTS_SHOWN) live.firstElementChild.remove();
          changed();
        },
      });
    } catch (err) {
      if (signal.aborted || err.status === 401) return;
      fill(liveState, `stream unavailable (${err.message}); polling`);
    }
    await load().catch(() => {});
    // A stream that ended or failed without news while the task is active: poll, backing
    // off (0.5 s doubling to 5 s), rather than reconnect at once.
    if (heard === 0 && ACTIVE.has(current()?.task?.status)) {
      await wait(delay);
      delay = Math.min(delay * 2, 5000);
    } else {
      delay = 500;
    }
  }
}

function anyActive(node) {
  if (!node || !node.task) return false;
  return ACTIVE.has(node.task.status) || (node.children ?? []).some(anyActive);
}

function eventLine(event) {
  let data = event.data;
  try { data = JSON.parse(event.data); } catch { /* plain text */ }
  const text = typeof data === 'object' && data !== null
    ? data.message ?? data.status ?? JSON.stringify(data)
    : String(data);
  return h('li', { class: 'event' }, h('span', { class: 'level' }, event.event), h('span', { class: 'message' }, text));
}

function taskView(tree) {
  const t = tree.task;
  return [
    h('section', { class: 'card' },
      h('dl', { class: 'facts' },
        fact('Plugin', t.plugin), fact('Callback', t.callback),
        fact('Attempts', `${t.attempts} of ${t.max_attempts}`), fact('Priority', t.priority),
        fact('Created', when(t.created_unix_ms)), fact('Started', when(t.started_unix_ms)),
        fact('Finished', when(t.finished_unix_ms)), fact('Generation', t.generation ?? '—'),
        t.parent ? fact('Parent', h('a', { href: `#/tasks/${t.parent}` }, t.parent)) : null,
        t.schedule ? fact('Schedule', t.schedule) : null,
        fact('Key', h('span', { class: 'mono small' }, t.key ?? '—')))),
    h('div', { class: 'split' },
      h('section', { class: 'card' }, h('h3', {}, 'Input'), h('pre', { class: 'result' }, pretty(t.input))),
      h('section', { class: 'card' }, h('h3', {}, t.error ? 'Error' : 'Result'),
        t.error ? errorBox(t.error) : h('pre', { class: 'result', id: 'task-result' }, t.result ? pretty(t.result) : '—'))),
  ];
}

/** The task's logs and follow-ups, beside its live events. */
function taskSide(tree) {
  const t = tree.task;
  return [
    h('section', { class: 'card' }, h('h3', {}, 'Logs'), logList(t.logs)),
    h('section', { class: 'card' }, h('h3', {}, 'Follow-ups'),
      (tree.children ?? []).length ? h('ul', { class: 'tree', id: 'task-tree' }, (tree.children ?? []).map(node))
        : h('p', { class: 'muted' }, 'None.')),
  ];
}

function fact(name, value) {
  return [h('dt', {}, name), h('dd', {}, value ?? '—')];
}

function node(child) {
  const t = child.task;
  return h('li', { 'data-task': t.id },
    h('a', { href: `#/tasks/${t.id}` }, `#${t.id}`), ' ', `${t.plugin} ${t.callback} `, badge(t.status),
    t.result ? h('span', { class: 'muted small mono' }, ` ${t.result.length > 80 ? `${t.result.slice(0, 80)}…` : t.result}`) : null,
    (child.children ?? []).length ? h('ul', {}, child.children.map(node)) : null);
}
