// Counts in the panel read as English does: "1 node × 1 GPU", "2 nodes × 0 GPUs"
// (trans._n), in a real Chromium against a JupyterLab started by
// tests/ui/test_panel_wording.py, which ran a 1-node 1-GPU job and a 2-node job
// without GPUs. Exits non-zero on the first failure.
//
// Env: NBS_URL, NBS_TOKEN, NBS_NOTEBOOK, NBS_ONE_GPU_JOB, NBS_TWO_NODE_JOB,
// NBS_SHOTS, NBS_CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { env, runInChromium, step } from './browser.mjs';

const URL_ = env('NBS_URL');
const TOKEN = env('NBS_TOKEN');
const NOTEBOOK = env('NBS_NOTEBOOK');
const ONE_GPU = env('NBS_ONE_GPU_JOB');
const TWO_NODES = env('NBS_TWO_NODE_JOB');
const SHOTS = env('NBS_SHOTS');

const text = async locator => (await locator.innerText()).trim();

async function wording(page) {
  step('open Lab and the panel');
  await page.goto(`${URL_}/lab/tree/${NOTEBOOK}?reset&token=${TOKEN}`);
  const tab = page.locator('.lm-TabBar-tab[data-id="nbscale-panel"]');
  await tab.waitFor({ timeout: 60_000 });
  const panel = page.locator('#nbscale-panel');
  if (!(await panel.isVisible())) {
    await tab.click();
  }
  await panel.waitFor({ state: 'visible' });

  step('the job rows: singular for one, plural for two and for zero');
  const size = id =>
    panel.locator(`.nbs-jobs .nbs-row[data-job-id="${id}"] .nbs-size`);
  await size(ONE_GPU).waitFor({ timeout: 30_000 });
  await size(TWO_NODES).waitFor({ timeout: 30_000 });
  assert.equal(await text(size(ONE_GPU)), '1 node × 1 GPU');
  assert.equal(await text(size(TWO_NODES)), '2 nodes × 0 GPUs');
  assert.equal(
    await text(panel.locator('.nbs-jobs .nbs-toolbar .nbs-muted')),
    '2 jobs'
  );
  await panel.screenshot({ path: join(SHOTS, 'panel-wording.png') });

  step('the job view spells out each count');
  await panel.locator(`.nbs-jobs .nbs-row[data-job-id="${ONE_GPU}"]`).click();
  const view = page.locator(
    `.jp-MainAreaWidget:visible .nbs-job-view[data-job-id="${ONE_GPU}"]`
  );
  await view.waitFor({ timeout: 30_000 });
  assert.equal(
    await text(view.locator('.nbs-facts .nbs-size')),
    '1 node × 1 process per node × 1 GPU per process'
  );
  await panel.locator(`.nbs-jobs .nbs-row[data-job-id="${TWO_NODES}"]`).click();
  const other = page.locator(
    `.jp-MainAreaWidget:visible .nbs-job-view[data-job-id="${TWO_NODES}"]`
  );
  await other.waitFor({ timeout: 30_000 });
  assert.equal(
    await text(other.locator('.nbs-facts .nbs-size')),
    '2 nodes × 1 process per node × 0 GPUs per process'
  );

  step("the run dialog's estimate: 1 node, then 2 nodes");
  await page.locator(`.lm-TabBar-tab:has-text("${NOTEBOOK}")`).first().click();
  await page.locator('.jp-NotebookPanel:visible .nbs-run-as-job').click();
  const dialog = page.locator('.jp-Dialog');
  const estimate = dialog.locator('.nbs-estimate');
  await estimate
    .filter({ hasText: 'Estimated cost' })
    .waitFor({ timeout: 30_000 });
  assert.match(
    await text(estimate),
    /\(1 node × 1 h × \$0\.00 per node hour\)/
  );
  await dialog.locator('input[name="nodes"]').fill('2');
  await estimate.filter({ hasText: '(2 nodes ×' }).waitFor();
  assert.match(
    await text(estimate),
    /\(2 nodes × 1 h × \$0\.00 per node hour\)/
  );
  await dialog.locator('.jp-Dialog-button.jp-mod-reject').click();
  await dialog.waitFor({ state: 'detached' });
}

await runInChromium(wording, SHOTS);
