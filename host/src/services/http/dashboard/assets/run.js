// The run panel: pick a plugin and a callback, edit the JSON input, run it and see the
// result and the logs, or submit it as a task and follow it.

import { get, post, listOf } from './api.js';
import { h, fill, badge, pretty, errorBox, logList, seconds } from './ui.js';

export async function render(main, { params, signal }) {
  const files = listOf(await get('/v1/plugins', { signal }), 'files', 'plugins')
    .filter((f) => f.serving && f.metadata);
  if (files.length === 0) {
    fill(main, h('h1', {}, 'Run'), h('p', { class: 'card muted' }, 'No plugin is serving.'));
    return;
  }
  const byName = Object.fromEntries(files.map((f) => [f.metadata.name, f]));
  const plugin = h('select', { id: 'run-plugin' },
    files.map((f) => h('option', { value: f.metadata.name }, f.metadata.name)));
  const callback = h('select', { id: 'run-callback' });
  const input = h('textarea', { id: 'run-input', rows: 10, spellcheck: 'false', class: 'mono' });
  const run = h('button', { id: 'run-call', type: 'submit', class: 'primary' }, 'Run');
  const submit = h('button', { id: 'run-submit', type: 'button' }, 'Submit as task');
  const output = h('section', { id: 'run-output', class: 'card' },
    h('p', { class: 'muted' }, 'Run a callback to see its result and logs here.'));

  const callbacks = () => {
    const meta = byName[plugin.value]?.metadata ?? {};
    const names = ['execute', ...(meta.callbacks ?? []).filter((c) => c !== 'execute')];
    const keep = callback.value || params.get('callback');
    fill(callback, names.map((name) => h('option', { value: name }, name)));
    if (keep && names.includes(keep)) callback.value = keep;
    else if (names.length > 1) callback.value = names[1];
  };
  // The last input run for each plugin and callback, kept in this tab.
  const remembered = () => `host.run.${plugin.value}.${callback.value}`;
  const recall = () => { input.value = sessionStorage.getItem(remembered()) ?? '{}'; };
  if (params.get('plugin') && byName[params.get('plugin')]) plugin.value = params.get('plugin');
  plugin.addEventListener('change', () => { callback.value = ''; callbacks(); recall(); });
  callback.addEventListener('change', recall);
  callbacks();
  recall();
  // Ctrl+Enter (or Cmd+Enter) runs.
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  const parsed = () => {
    try {
      JSON.parse(input.value);
      input.classList.remove('invalid');
      return true;
    } catch (err) {
      input.classList.add('invalid');
      fill(output, h('p', { class: 'error' }, `The input is not JSON: ${err.message}`));
      return false;
    }
  };

  const form = h('form', { id: 'run-form', class: 'card run-form' },
    h('div', { class: 'row' },
      h('label', {}, 'Plugin', plugin),
      h('label', {}, 'Callback', callback)),
    h('label', { for: 'run-input' }, 'Input (JSON)', h('span', { class: 'hint' }, 'Ctrl+Enter runs')),
    input,
    h('div', { class: 'row buttons' }, run, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!parsed()) return;
    sessionStorage.setItem(remembered(), input.value);
    run.disabled = true;
    fill(output, h('p', { class: 'muted' }, `Running ${plugin.value} ${callback.value}…`));
    try {
      const path = `/v1/plugins/${encodeURIComponent(plugin.value)}/${encodeURIComponent(callback.value)}`;
      const answer = await post(path, input.value, { signal });
      fill(output, outcomeView(answer?.outcome ?? answer));
    } catch (err) {
      if (err.name !== 'AbortError') fill(output, refusal(err));
    } finally {
      run.disabled = false;
    }
  });
  submit.addEventListener('click', async () => {
    if (!parsed()) return;
    submit.disabled = true;
    try {
      const answer = await post('/v1/tasks',
        { plugin: plugin.value, callback: callback.value, input: JSON.parse(input.value) }, { signal });
      const id = answer?.id ?? answer?.submitted?.id;
      if (id !== undefined && id !== null) location.hash = `#/tasks/${id}`;
      else fill(output, h('h2', {}, 'Submitted'), h('pre', {}, pretty(answer)));
    } catch (err) {
      if (err.name !== 'AbortError') fill(output, refusal(err));
    } finally {
      submit.disabled = false;
    }
  });

  fill(main, h('h1', {}, 'Run'), h('div', { class: 'split' }, form, output));
}

function outcomeView(outcome) {
  const failed = Boolean(outcome.error);
  return [
    h('div', { class: 'page-head' },
      h('h2', {}, `${outcome.plugin ?? ''} ${outcome.callback ?? ''}`),
      badge(failed ? outcome.error.kind : 'ok', failed ? 'failed' : 'success')),
    h('p', { class: 'muted small' },
      `generation ${outcome.generation ?? '—'} · ${seconds((outcome.elapsed_us ?? 0) / 1e6)}`),
    failed ? errorBox(outcome.error) : null,
    h('h3', {}, 'Result'),
    h('pre', { id: 'run-result', class: 'result' }, failed ? '—' : pretty(outcome.result ?? null)),
    h('h3', {}, 'Logs'),
    h('div', { id: 'run-logs' }, logList(outcome.logs)),
    outcome.follow_ups && outcome.follow_ups.length
      ? [h('h3', {}, 'Follow-ups'), h('pre', { class: 'result' }, pretty(outcome.follow_ups))]
      : null,
  ];
}

function refusal(err) {
  const status = err.status ? `The host answered ${err.status}` : 'The host did not answer';
  return [h('div', { class: 'page-head' }, h('h2', {}, status), badge(err.kind ?? 'error', 'failed')), errorBox(err)];
}
