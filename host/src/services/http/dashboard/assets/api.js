// The host's HTTP API as the pages use it. The token lives in this tab's sessionStorage and
// goes in the Authorization header of every data request, never in a URL. A 401 anywhere
// sends the tab back to the sign-in form.

const TOKEN_KEY = 'host.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value.trim());
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An error the API answered (`{"error": {"kind", "message"}}`), or a network failure. */
export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

let unauthorized = () => {};

/** What to do when the server refuses the token (sign in again). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${token() ?? ''}`, ...extra };
}

async function refused(response) {
  if (response.status === 401) {
    unauthorized();
    return new ApiError(401, 'unauthorized', 'The token was refused: sign in again.');
  }
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      return new ApiError(response.status, body.error.kind, body.error.message);
    }
  } catch { /* not JSON */ }
  return new ApiError(response.status, `http ${response.status}`,
    text.trim() || response.statusText || 'request failed');
}

/** One request; the parsed JSON answer, or a thrown ApiError. */
export async function request(method, path, body, { signal } = {}) {
  const init = { method, headers: headers({ Accept: 'application/json' }), signal, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'unreachable', `the host did not answer (${err.message})`);
  }
  if (!response.ok) throw await refused(response);
  const text = await response.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return text; }
}

export const get = (path, options) => request('GET', path, undefined, options);
export const post = (path, body, options) => request('POST', path, body ?? {}, options);

/** The Prometheus text of /metrics (an empty string where it cannot be read). */
export async function metrics() {
  try {
    const response = await fetch('/metrics', { headers: headers({ Accept: 'text/plain' }), cache: 'no-store' });
    if (response.status === 401) { unauthorized(); return ''; }
    return response.ok ? await response.text() : '';
  } catch {
    return '';
  }
}

/** The list of a response that is either the list itself or an object holding it. */
export function listOf(value, ...keys) {
  if (Array.isArray(value)) return value;
  for (const key of keys) {
    if (value && Array.isArray(value[key])) return value[key];
  }
  return [];
}

/**
 * Follows a Server-Sent Events stream with fetch(), so it can carry the Authorization header
 * (EventSource cannot). Calls `onEvent({event, data, id})` for each event; resolves with
 * the last event id when the server ends the stream. `lastEventId` resumes a stream.
 */
export async function events(path, { lastEventId, signal, onEvent }) {
  const extra = { Accept: 'text/event-stream' };
  if (lastEventId) extra['Last-Event-ID'] = lastEventId;
  const response = await fetch(path, { headers: headers(extra), signal, cache: 'no-store' });
  if (!response.ok || !response.body) throw await refused(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let lastId = lastEventId ?? null;
  let pending = { event: '', data: [], id: null };
  const line = (text) => {
    if (text === '') {
      if (pending.id !== null) lastId = pending.id;
      if (pending.data.length > 0) {
        onEvent({ event: pending.event || 'message', data: pending.data.join('\n'), id: lastId });
      }
      pending = { event: '', data: [], id: null };
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') pending.event = value;
    else if (field === 'data') pending.data.push(value);
    else if (field === 'id' && !value.includes('\0')) pending.id = value;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n')) >= 0) {
      line(buffer.slice(0, end).replace(/\r$/, ''));
      buffer = buffer.slice(end + 1);
    }
  }
  return lastId;
}
