// The Jobs section pages by cursor (issue 23, keyset paging): forward with the
// page's `next`, back with the cursor that fetched the page before, and a status
// filter starting again from the first page. In a real Chromium against a
// JupyterLab started by tests/ui/test_panel_paging.py, whose store holds 60 jobs
// pg-00 … pg-59 (created in that order; the even ones FAILED, the odd ones
// SUCCEEDED). Exits non-zero on the first failure.
//
// Env: NBS_URL, NBS_TOKEN, NBS_SHOTS, NBS_CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { env, runInChromium, step } from './browser.mjs';

const URL_ = env('NBS_URL');
const TOKEN = env('NBS_TOKEN');
const SHOTS = env('NBS_SHOTS');

const id = i => `pg-${String(i).padStart(2, '0')}`;
/** Job ids from `from` down to `to`, every `by`. */
const down = (from, to, by = 1) => {
  const out = [];
  for (let i = from; i >= to; i -= by) {
    out.push(id(i));
  }
  return out;
};

async function paging(page) {
  step('open Lab and the panel');
  await page.goto(`${URL_}/lab?reset&token=${TOKEN}`);
  const tab = page.locator('.lm-TabBar-tab[data-id="nbscale-panel"]');
  await tab.waitFor({ timeout: 60_000 });
  const panel = page.locator('#nbscale-panel');
  if (!(await panel.isVisible())) {
    await tab.click();
  }
  await panel.waitFor({ state: 'visible' });
  const jobs = panel.locator('.nbs-jobs');
  const pager = jobs.locator('.nbs-pager');
  const older = pager.locator('.nbs-pager-forward');
  const newer = pager.locator('.nbs-pager-back');
  const position = pager.locator('.nbs-pager-position');

  const rows = () =>
    jobs
      .locator('.nbs-row')
      .evaluateAll(els => els.map(e => e.getAttribute('data-job-id')));
  const shows = async (ids, where, buttons) => {
    const deadline = Date.now() + 30_000;
    let got = await rows();
    while (JSON.stringify(got) !== JSON.stringify(ids)) {
      if (Date.now() > deadline) {
        assert.deepEqual(got, ids, 'the rows of the page');
      }
      await page.waitForTimeout(100);
      got = await rows();
    }
    assert.equal((await position.innerText()).trim(), where);
    assert.equal(await newer.isDisabled(), !buttons.newer, 'Newer enabled?');
    assert.equal(await older.isDisabled(), !buttons.older, 'Older enabled?');
  };

  step('first page: the 25 newest, nothing newer');
  await shows(down(59, 35), '1–25 / 60', { newer: false, older: true });
  assert.equal(
    (await jobs.locator('.nbs-toolbar .nbs-muted').innerText()).trim(),
    '60 jobs'
  );
  await panel.screenshot({ path: join(SHOTS, 'paging-first.png') });

  step('older, older: every job once, the last page short');
  await older.click();
  await shows(down(34, 10), '26–50 / 60', { newer: true, older: true });
  await older.click();
  await shows(down(9, 0), '51–60 / 60', { newer: true, older: false });
  await panel.screenshot({ path: join(SHOTS, 'paging-last.png') });

  step('newer, newer: the same pages back');
  await newer.click();
  await shows(down(34, 10), '26–50 / 60', { newer: true, older: true });
  await newer.click();
  await shows(down(59, 35), '1–25 / 60', { newer: false, older: true });

  step('a status filter starts from its own first page and pages too');
  await older.click();
  await shows(down(34, 10), '26–50 / 60', { newer: true, older: true });
  await jobs
    .locator('select[aria-label="Filter jobs by status"]')
    .selectOption('FAILED');
  await shows(down(58, 10, 2), '1–25 / 30', { newer: false, older: true });
  await older.click();
  await shows(down(8, 0, 2), '26–30 / 30', { newer: true, older: false });
  await newer.click();
  await shows(down(58, 10, 2), '1–25 / 30', { newer: false, older: true });
}

await runInChromium(paging, SHOTS);
