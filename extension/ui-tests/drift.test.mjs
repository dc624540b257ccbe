// The panel's monitoring views in a real Chromium against a JupyterLab started by
// tests/ui/test_monitoring_panel.py: an endpoint's drift per window (drifting
// features first) and the "Running now" list. Exits non-zero on the first failure.
//
// Env: NBS_URL, NBS_TOKEN, NBS_NOTEBOOK, NBS_ENDPOINT, NBS_FEATURE (the planted
// drifting feature), NBS_SHOTS, NBS_CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { env, runInChromium, step } from './browser.mjs';

const URL_ = env('NBS_URL');
const TOKEN = env('NBS_TOKEN');
const NOTEBOOK = env('NBS_NOTEBOOK');
const ENDPOINT = env('NBS_ENDPOINT');
const FEATURE = env('NBS_FEATURE');
const SHOTS = env('NBS_SHOTS');

/** Drag the sidebar wider, as a user would to read the panel. */
async function widenSidebar(page, by) {
  const handle = page
    .locator('#jp-main-split-panel > .lm-SplitPanel-handle:visible')
    .first();
  const box = await handle.boundingBox();
  assert.ok(box, 'sidebar handle');
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  await page.mouse.move(x, y);
  await page.mouse.down();
  await page.mouse.move(x + by, y, { steps: 5 });
  await page.mouse.up();
}

async function drift(page) {
  step('open Lab and the panel');
  await page.goto(`${URL_}/lab/tree/${NOTEBOOK}?reset&token=${TOKEN}`);
  const panel = page.locator('#nbscale-panel');
  await page
    .locator('.lm-TabBar-tab[data-id="nbscale-panel"]')
    .waitFor({ timeout: 60_000 });
  if (!(await panel.isVisible())) {
    await page.locator('.lm-TabBar-tab[data-id="nbscale-panel"]').click();
  }
  await panel.waitFor({ state: 'visible' });
  await widenSidebar(page, 260);

  step('the running-now list names the endpoint and its cost per hour');
  const idle = panel.locator(`.nbs-idle [data-idle="${ENDPOINT}"]`);
  await idle.waitFor({ timeout: 30_000 });
  assert.match(await idle.innerText(), /\$0\.00\/h/);

  step('open the endpoint: SageMaker-named metrics and drift per window');
  await panel
    .locator('.nbs-endpoints .nbs-link', { hasText: ENDPOINT })
    .click();
  const detail = panel.locator(
    `.nbs-endpoint-detail[data-endpoint="${ENDPOINT}"]`
  );
  await detail
    .locator('.nbs-sagemaker-metrics', { hasText: 'Invocations' })
    .waitFor({ timeout: 30_000 });
  const view = detail.locator(`.nbs-drift[data-drift="${ENDPOINT}"]`);
  // a day-long window holds everything captured
  await view.getByLabel('Drift window').selectOption('1d');
  const alert = view.locator('.nbs-drift-window.nbs-drift-alert').first();
  await alert.waitFor({ timeout: 30_000 });
  assert.match(await alert.innerText(), /drift in \d+ of \d+ features?/);
  // drifting features come first and are marked
  const first = alert.locator('tbody tr').first();
  assert.equal(await first.getAttribute('data-feature'), FEATURE);
  assert.match((await first.getAttribute('class')) ?? '', /nbs-drifting/);
  // fold the other sections and bring the drift view into the screenshot
  for (const title of ['Jobs', 'Pipelines']) {
    await panel.locator('.jp-AccordionPanel-title', { hasText: title }).click();
  }
  await view.scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(SHOTS, 'panel-drift.png') });
}

await runInChromium(drift, SHOTS);
