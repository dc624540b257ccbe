// The job view's restart count in a real Chromium against a JupyterLab started by
// tests/ui/test_job_restarts.py: a job whose first attempt failed and that torchrun
// restarted once (--max-restarts 1). Exits non-zero on the first failure.
//
// Env: NBS_URL, NBS_TOKEN, NBS_NOTEBOOK, NBS_JOB (the job's id), NBS_SHOTS,
// NBS_CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { env, runInChromium, step } from './browser.mjs';

const URL_ = env('NBS_URL');
const TOKEN = env('NBS_TOKEN');
const NOTEBOOK = env('NBS_NOTEBOOK');
const JOB = env('NBS_JOB');
const SHOTS = env('NBS_SHOTS');

async function restarts(page) {
  step('open Lab and the panel');
  await page.goto(`${URL_}/lab/tree/${NOTEBOOK}?reset&token=${TOKEN}`);
  const tab = page.locator('.lm-TabBar-tab[data-id="nbscale-panel"]');
  await tab.waitFor({ timeout: 60_000 });
  const panel = page.locator('#nbscale-panel');
  if (!(await panel.isVisible())) {
    await tab.click();
  }
  await panel.waitFor({ state: 'visible' });

  step('the job is listed; open its view');
  const row = panel.locator(`.nbs-jobs .nbs-row[data-job-id="${JOB}"]`);
  await row.waitFor({ timeout: 30_000 });
  await row.click();
  const view = page.locator(
    `.jp-MainAreaWidget:visible .nbs-job-view[data-job-id="${JOB}"]`
  );
  await view.waitFor({ timeout: 30_000 });

  step('the view shows one restart of the one allowed');
  const count = view.locator('.nbs-restarts');
  await count.waitFor();
  assert.equal(await count.getAttribute('data-restarts'), '1');
  assert.equal((await count.innerText()).trim(), '1 of 1 allowed');
  const label = view.locator('.nbs-facts dt', { hasText: 'Restarts' });
  assert.equal(await label.count(), 1);
  // the log of rank 0 holds both attempts, the restart marked between them
  const log = view.getByLabel('Log output');
  await page.waitForFunction(
    el => /--- restart 1 ---/.test(el.textContent ?? ''),
    await log.elementHandle(),
    { timeout: 30_000 }
  );
  await view.screenshot({ path: join(SHOTS, 'job-restarts.png') });
}

await runInChromium(restarts, SHOTS);
