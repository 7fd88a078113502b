// The dashboard's entry: sign-in, the header, and hash routing between the pages.
// #/plugins, #/run, #/tasks, #/tasks/ID, #/fleet; #token=TOKEN signs in and is dropped from
// the URL at once (a fragment never reaches the server).

import { token, setToken, forgetToken, onUnauthorized, get } from './api.js';
import { h, fill, errorBox } from './ui.js';
import * as plugins from './plugins.js';
import * as run from './run.js';
import * as tasks from './tasks.js';
import * as fleet from './fleet.js';

const pages = { plugins, run, tasks, fleet };
const main = document.getElementById('main');
let current = null;

/** `#/tasks/12?status=failed` → { page: 'tasks', args: ['12'], params: URLSearchParams }. */
function route() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const [page, ...args] = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { page: pages[page] ? page : 'plugins', args, params: new URLSearchParams(query ?? '') };
}

function takeTokenFromFragment() {
  if (!location.hash.startsWith('#token=')) return;
  const value = decodeURIComponent(location.hash.slice('#token='.length));
  if (value.trim()) setToken(value);
  history.replaceState(null, '', `${location.pathname}${location.search}#/plugins`);
}

function leave() {
  if (current) current.controller.abort();
  current = null;
}

function show() {
  leave();
  const signedIn = Boolean(token());
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('sign-out').hidden = !signedIn;
  if (!signedIn) {
    signIn();
    return;
  }
  const where = route();
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.page === where.page);
  }
  const controller = new AbortController();
  current = { controller };
  document.title = `${where.page} · host`;
  fill(main);
  pages[where.page].render(main, { ...where, signal: controller.signal }).catch((err) => {
    if (err && err.name === 'AbortError') return;
    if (err && err.status === 401) return;
    main.append(errorBox(err));
  });
}

function signIn(message) {
  const input = h('input', {
    id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'paste the token', required: true,
  });
  const status = h('div', { class: 'sign-in-status' }, message ? h('p', { class: 'error' }, message) : null);
  const form = h('form', { id: 'sign-in', class: 'card sign-in' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' },
      'Paste the host\'s HTTP token (HOST_HTTP_TOKEN, [http] token_file, or the state directory\'s http-token). ',
      'It stays in this tab only.'),
    h('label', { for: 'token' }, 'Token'),
    input,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    setToken(input.value);
    try {
      await get('/v1/plugins');
      if (!location.hash.startsWith('#/')) location.hash = '#/plugins';
      show();
    } catch (err) {
      forgetToken();
      fill(status, err.status === 401 ? h('p', { class: 'error' }, 'That token was refused.') : errorBox(err));
    }
  });
  fill(main, form);
  input.focus();
}

onUnauthorized(() => {
  forgetToken();
  // The sign-in form says so itself when the token it just tried is refused.
  if (document.getElementById('sign-in')) return;
  leave();
  document.getElementById('nav').hidden = true;
  document.getElementById('sign-out').hidden = true;
  signIn('The host refused the token: sign in again.');
});

document.getElementById('sign-out').addEventListener('click', () => {
  forgetToken();
  show();
});

window.addEventListener('hashchange', () => {
  takeTokenFromFragment();
  show();
});

takeTokenFromFragment();
show();
