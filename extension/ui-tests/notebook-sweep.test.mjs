// A `%%train --sweep` cell's live table in a real Chromium against a JupyterLab started
// by tests/ui/test_notebook_sweep_table.py. The notebook NBS_NOTEBOOK has three cells:
//   0: %load_ext nbscale, the imports and `lr = 0.01`
//   1: the sweep of 4 trials (2 at a time) on a planted objective, val_loss:min
//   2: print(sweep.best_params)
// The script runs them all and watches cell 1's output area with a MutationObserver
// from before it runs to the end: one output child, the same element all along (marked
// with a JS property), whose table changes in place while trials finish; at the end
// the final table best first with the best marked, SUCCEEDED, and the two plots
// decoded. What it saw goes to NBS_SHOTS/notebook-sweep.json for the test to compare
// with the store. Exits non-zero on the first failure.
//
// Env: NBS_URL, NBS_TOKEN, NBS_NOTEBOOK, NBS_SHOTS, NBS_CHROMIUM.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { env, runInChromium, step } from './browser.mjs';

const URL_ = env('NBS_URL');
const TOKEN = env('NBS_TOKEN');
const NOTEBOOK = env('NBS_NOTEBOOK');
const SHOTS = env('NBS_SHOTS');
const SWEEP_TIMEOUT = 240_000;

/** Installed in the page on the sweep cell's node: logs every state its output goes through. */
function watch(cell) {
  const area = cell.querySelector('.jp-OutputArea');
  const live = { states: [], removed: 0, marked: null };
  globalThis.__nbsLive = live;
  const children = () =>
    [...area.children].filter(c => c.classList.contains('jp-OutputArea-child'));
  const record = mutations => {
    for (const m of mutations) {
      for (const n of m.removedNodes) {
        if (n === live.marked) {
          live.removed += 1; // the table's output was taken out of the page
        }
      }
    }
    const kids = children();
    const sweep = area.querySelector('.nbscale-sweep');
    if (kids.length === 1 && sweep && live.marked === null) {
      live.marked = kids[0];
      kids[0].nbsMark = 'live-table';
      const out = kids[0].querySelector('.jp-OutputArea-output');
      out.nbsMark = 'live-table-renderer';
    }
    const out = kids[0]?.querySelector('.jp-OutputArea-output');
    live.states.push({
      children: kids.length,
      kinds: kids.map(k =>
        k.querySelector('.nbscale-sweep')
          ? 'table'
          : (k.querySelector('.jp-OutputArea-output')?.className ?? '?')
      ),
      childMarked: kids.length > 0 && kids[0].nbsMark === 'live-table',
      rendererMarked:
        out !== undefined &&
        out !== null &&
        out.nbsMark === 'live-table-renderer',
      status: sweep?.getAttribute('data-status') ?? null,
      summary: sweep?.querySelector('b')?.textContent ?? null,
      rows: sweep
        ? [...sweep.querySelectorAll('tbody tr')].map(tr =>
            [...tr.cells].map(td => td.textContent)
          )
        : null
    });
  };
  new globalThis.MutationObserver(record).observe(area, {
    childList: true,
    subtree: true,
    characterData: true,
    attributes: true,
    attributeFilter: ['data-status']
  });
}

async function notebookSweep(page) {
  step('open the notebook');
  await page.goto(`${URL_}/lab/tree/${NOTEBOOK}?reset&token=${TOKEN}`);
  const notebook = page.locator('.jp-NotebookPanel:visible .jp-Notebook');
  const cells = notebook.locator('.jp-Cell');
  await cells.nth(2).waitFor({ timeout: 60_000 });
  const sweepCell = cells.nth(1);
  assert.match(await sweepCell.innerText(), /%%train --sweep/);
  await sweepCell.evaluate(watch);

  // Run All before the notebook's session has its kernel asks for a kernel instead; the
  // status bar names the kernel and its status only once it is connected (the toolbar's
  // execution indicator says idle from the start)
  await page
    .locator('.jp-StatusBar-TextItem', {
      hasText: /^Python 3 \(ipykernel\) \| Idle$/
    })
    .waitFor({ timeout: 60_000 });

  step('run all cells');
  await page.locator('.lm-MenuBar-item', { hasText: /^Run$/ }).click();
  await page
    .locator('.lm-Menu-itemLabel', { hasText: /^Run All Cells$/ })
    .click();

  step('the live table appears in one output and changes in place');
  const area = sweepCell.locator('.jp-OutputArea');
  await area
    .locator('.nbscale-sweep')
    .waitFor({ timeout: 120_000, state: 'attached' });
  // until the final table with its plots, the cell ends, or the output misbehaves
  await page.waitForFunction(
    cell => {
      const live = globalThis.__nbsLive;
      const ended = !/\*/.test(
        cell.querySelector('.jp-InputPrompt')?.textContent ?? ''
      );
      const misbehaved =
        live.removed > 0 ||
        live.states.some(
          s =>
            s.children > 0 &&
            (s.kinds.join() !== 'table' || !s.childMarked || !s.rendererMarked)
        );
      const final =
        live.states.at(-1)?.status === 'SUCCEEDED' &&
        live.marked?.querySelectorAll('img').length === 2;
      return ended || misbehaved || final;
    },
    await sweepCell.elementHandle(),
    { timeout: SWEEP_TIMEOUT, polling: 200 }
  );
  const live = await page.evaluate(() => ({
    ...globalThis.__nbsLive,
    marked: undefined,
    stillInPage: globalThis.__nbsLive.marked?.isConnected ?? false
  }));
  const states = live.states.filter(s => s.children > 0);
  assert.ok(states.length > 0, 'no output seen');
  for (const s of states) {
    assert.deepEqual(s.kinds, ['table'], 'one output child, the table');
    assert.ok(s.childMarked, 'the output child was replaced');
    assert.ok(s.rendererMarked, 'the rendered output was replaced');
  }
  assert.equal(live.removed, 0, 'the table output was removed from the page');
  assert.ok(live.stillInPage, 'the marked output is gone');
  const done = s => Number(/, (\d+)\/4 trials done/.exec(s.summary)[1]);
  const running = states.filter(s => s.status === 'RUNNING');
  const doneWhileRunning = [...new Set(running.map(done))];
  assert.ok(
    doneWhileRunning.length >= 2,
    `the finished count never changed while it ran: ${doneWhileRunning}`
  );
  const counts = states.map(done);
  assert.deepEqual(
    counts,
    [...counts].sort((a, b) => a - b),
    'finished count went back'
  );
  const tables = new Set(states.map(s => JSON.stringify(s.rows)));
  assert.ok(tables.size >= 3, `the rows changed ${tables.size - 1} times`);

  step('the final table: 4 trials best first, the best marked, SUCCEEDED');
  const sweep = area.locator('.nbscale-sweep');
  assert.equal(await sweep.getAttribute('data-status'), 'SUCCEEDED');
  const summary = (await sweep.locator('b').first().innerText()).trim();
  assert.match(summary, /: SUCCEEDED, 4\/4 trials done; best val_loss /);
  const head = await sweep
    .locator('thead th')
    .evaluateAll(ths => ths.map(th => th.textContent));
  assert.deepEqual(head, [
    'trial',
    'status',
    'lr',
    'last',
    'val_loss:min',
    'duration',
    'cost'
  ]);
  const rows = await sweep
    .locator('tbody tr')
    .evaluateAll(trs => trs.map(tr => [...tr.cells].map(td => td.textContent)));
  assert.equal(rows.length, 4, 'four trials');
  const col = name => head.indexOf(name);
  assert.deepEqual(
    rows.map(r => r[col('status')]),
    ['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED']
  );
  const values = rows.map(r => Number(r[col('val_loss:min')]));
  assert.deepEqual(
    values,
    [...values].sort((a, b) => a - b),
    'not best first'
  );
  const marks = rows.filter(r => r[col('trial')].endsWith(' *'));
  assert.deepEqual(marks, [rows[0]], 'the best row is the one marked');
  assert.match(summary, new RegExp(`\\(trial ${parseInt(rows[0][0])}: lr=`));

  step('the optimization history and parallel coordinates are drawn');
  const imgs = area.locator('.jp-OutputArea-child img');
  const drawn = await imgs.evaluateAll(async els => {
    await Promise.all(els.map(img => img.decode()));
    return els.map(img => [img.alt, img.naturalWidth, img.naturalHeight]);
  });
  assert.deepEqual(
    drawn.map(d => d[0]),
    ['optimization history', 'parallel coordinates']
  );
  for (const [alt, w, h] of drawn) {
    assert.ok(w > 100 && h > 100, `${alt} is ${w}x${h}`);
  }
  await sweepCell.screenshot({ path: join(SHOTS, 'notebook-sweep.png') });

  step('the kernel has `sweep`: print(sweep.best_params)');
  const printed = cells.nth(2).locator('.jp-OutputArea-output');
  await printed.waitFor({ timeout: 60_000 });
  const best = (await printed.innerText()).trim();
  assert.match(best, /^\{'lr': [0-9.e-]+\}$/);
  writeFileSync(
    join(SHOTS, 'notebook-sweep.json'),
    JSON.stringify({
      summary,
      head,
      rows,
      best,
      states: states.length,
      doneWhileRunning
    })
  );
}

await runInChromium(notebookSweep, SHOTS);
