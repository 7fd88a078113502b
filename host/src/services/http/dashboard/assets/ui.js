// Small DOM helpers shared by the pages: element building, formatting, status badges.

/** Makes an element: h('tr', {class: 'x', onclick: f}, child, 'text', ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'value') {
      el.value = value;
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A status badge: serving, on probation, success, failed ... */
export function badge(text, kind = text) {
  return h('span', { class: `badge badge-${String(kind).replace(/[^a-z]+/gi, '-')}` }, text);
}

/** Milliseconds since the epoch as local date and time. */
export function when(unixMs) {
  if (!unixMs) return '—';
  const d = new Date(unixMs);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A duration in seconds, as people read it. */
export function seconds(s) {
  if (s === undefined || s === null || Number.isNaN(s)) return '—';
  if (s < 0.001) return `${Math.round(s * 1e6)} µs`;
  if (s < 1) {
    const ms = s * 1000;
    return `${ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : Math.round(ms)} ms`;
  }
  return `${s.toFixed(2)} s`;
}

/** Pretty JSON of a value, or of a JSON string. */
export function pretty(value) {
  if (typeof value === 'string') {
    try { return JSON.stringify(JSON.parse(value), null, 2); } catch { return value; }
  }
  return JSON.stringify(value, null, 2);
}

/** A one-line error box. */
export function errorBox(err) {
  const kind = err && err.kind ? `${err.kind}: ` : '';
  return h('p', { class: 'error' }, `${kind}${err && err.message ? err.message : String(err)}`);
}

/** Log lines as a list. */
export function logList(logs) {
  if (!logs || logs.length === 0) return h('p', { class: 'muted' }, 'No log lines.');
  return h('ol', { class: 'logs' }, logs.map((line) => h('li', { class: `log log-${line.level}` },
    h('time', {}, line.unix_ms ? when(line.unix_ms).slice(11) : ''),
    h('span', { class: 'level' }, line.level ?? ''),
    h('span', { class: 'message' }, line.message ?? JSON.stringify(line)))));
}

/** Shows a short message under the header for a few seconds. */
export function notify(text, kind = 'ok') {
  const box = document.getElementById('notice');
  if (!box) return;
  box.textContent = text;
  box.className = `notice notice-${kind}`;
  box.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

/** A table head; the columns named in `numeric` are right-aligned like their cells. */
export function head(titles, numeric = []) {
  return h('thead', {}, h('tr', {}, titles.map((title) =>
    h('th', { class: numeric.includes(title) ? 'num' : null }, title))));
}
