// The Sweeps section (issue 22) in a real Chromium against a JupyterLab started by
// tests/ui/test_panel_sweeps.py, whose store holds one RUNNING local sweep of 6
// planned trials (val_loss:min) with an Optuna journal of real trials:
//   0 SUCCEEDED 0.42 · 1 SUCCEEDED 0.05 (best) · 2 PRUNED (last 2.0) · 3 RUNNING (last 0.2)
// and two of its trials as jobs beside one ordinary job.
// Midway the script writes NBS_SHOTS/ready and waits for NBS_SHOTS/changed: by then
// the test has finished trial 3 at 0.01 (the new best) and added trial 4 RUNNING
// (last 0.3). Exits non-zero on the first failure.
//
// Env: NBS_URL, NBS_TOKEN, NBS_SHOTS, NBS_SWEEP (its id), NBS_CHROMIUM.
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { env, runInChromium, step } from './browser.mjs';

const URL_ = env('NBS_URL');
const TOKEN = env('NBS_TOKEN');
const SHOTS = env('NBS_SHOTS');
const SWEEP = env('NBS_SWEEP');

/** Poll `get` until it deep-equals `want` (30 s). */
async function until(page, get, want, what) {
  const deadline = Date.now() + 30_000;
  let got = await get();
  while (JSON.stringify(got) !== JSON.stringify(want)) {
    if (Date.now() > deadline) {
      assert.deepEqual(got, want, what);
    }
    await page.waitForTimeout(100);
    got = await get();
  }
}

async function sweeps(page) {
  step('open Lab and the panel');
  await page.goto(`${URL_}/lab?reset&token=${TOKEN}`);
  const tab = page.locator('.lm-TabBar-tab[data-id="nbscale-panel"]');
  await tab.waitFor({ timeout: 60_000 });
  const panel = page.locator('#nbscale-panel');
  if (!(await panel.isVisible())) {
    await tab.click();
  }
  await panel.waitFor({ state: 'visible' });
  const section = panel.locator('.nbs-sweeps');

  step('the sweep is listed: status, trials ended of planned, best objective');
  const row = section.locator(`.nbs-sweep-row[data-sweep-id="${SWEEP}"]`);
  await row.waitFor({ timeout: 30_000 });
  assert.equal((await row.locator('.nbs-link').innerText()).trim(), 'lr-sweep');
  assert.equal(
    (await row.locator('.nbs-status').innerText()).trim(),
    'running'
  );
  assert.equal(
    (await row.locator('.nbs-sweep-progress').innerText()).trim(),
    '3/6'
  );
  assert.equal(
    (await row.locator('.nbs-sweep-best').innerText()).trim(),
    'best val_loss 0.05 (trial 1)'
  );

  step('a click opens its trials, best first by val_loss');
  await row.click();
  const view = section.locator(`.nbs-sweep-view[data-sweep-id="${SWEEP}"]`);
  await view.waitFor();
  const trials = view.locator('table.nbs-trials tbody tr');
  const order = () =>
    trials.evaluateAll(rows => rows.map(r => r.getAttribute('data-trial')));
  await until(page, order, ['1', '3', '0', '2'], 'trials by val_loss');
  const heads = await view
    .locator('table.nbs-trials thead th')
    .evaluateAll(ths => ths.map(th => th.textContent.trim()));
  assert.deepEqual(heads, [
    'trial',
    'lr',
    'batch',
    'layers',
    'last',
    'val_loss:min',
    'status',
    'duration',
    'cost'
  ]);
  const best = view.locator('tr.nbs-best');
  assert.equal(await best.count(), 1, 'one best row');
  assert.equal(await best.getAttribute('data-trial'), '1');
  assert.equal(await view.locator('.nbs-best-mark').count(), 1);
  assert.equal(
    (await trials.nth(1).locator('.nbs-status').innerText()).trim(),
    'running'
  );
  assert.equal(
    (await trials.nth(3).locator('.nbs-status').innerText()).trim(),
    'pruned'
  );
  assert.equal(
    (await trials.nth(0).locator('td.nbs-value').innerText()).trim(),
    '0.05'
  );
  assert.equal(
    (await trials.nth(1).locator('td.nbs-last').innerText()).trim(),
    '0.2'
  );

  step('the objective by trial: every scored trial and the best so far');
  const lines = view.locator('.nbs-sweep-objective svg polyline');
  assert.equal(await lines.count(), 2);
  const pointCounts = () =>
    lines.evaluateAll(ps =>
      ps.map(p => p.getAttribute('points').trim().split(/\s+/).length)
    );
  assert.deepEqual(await pointCounts(), [4, 2]);

  step('parallel coordinates: an axis per parameter and the objective');
  const pc = view.locator('svg.nbs-parcoords');
  const axes = () =>
    pc
      .locator('.nbs-parcoords-axis')
      .evaluateAll(gs => gs.map(g => g.getAttribute('data-axis')));
  assert.deepEqual(await axes(), ['lr', 'batch', 'layers', 'val_loss']);
  const pcLines = () =>
    pc
      .locator('polyline.nbs-parcoords-line')
      .evaluateAll(ps =>
        ps.map(p => [
          p.getAttribute('data-trial'),
          p.getAttribute('points').trim().split(/\s+/).length
        ])
      );
  // the failed-free trials cross all four axes (the running one at its latest value)
  assert.deepEqual(await pcLines(), [
    ['1', 4],
    ['3', 4],
    ['0', 4],
    ['2', 4]
  ]);
  assert.equal(
    await pc.locator('polyline.nbs-best').getAttribute('data-trial'),
    '1'
  );
  // the other sections folded, so the screenshot shows the whole sweep
  const fold = async names => {
    for (const name of names) {
      await panel
        .locator('.lm-AccordionPanel-title', { hasText: name })
        .first()
        .click();
    }
  };
  await fold(['Jobs', 'Pipelines', 'Endpoints']);
  await panel.screenshot({ path: join(SHOTS, 'sweeps-running.png') });

  step('the data changes: the table follows in place');
  const rowOfTrial1 = await view.locator('tr[data-trial="1"]').elementHandle();
  writeFileSync(join(SHOTS, 'ready'), '');
  const deadline = Date.now() + 30_000;
  while (!existsSync(join(SHOTS, 'changed'))) {
    assert.ok(Date.now() < deadline, 'the test never changed the study');
    await page.waitForTimeout(100);
  }
  await until(page, order, ['3', '1', '4', '0', '2'], 'trials after change');
  assert.equal(
    await view.locator('tr.nbs-best').getAttribute('data-trial'),
    '3'
  );
  assert.equal(await view.locator('.nbs-best-mark').count(), 1);
  assert.ok(
    await rowOfTrial1.evaluate(el => el.isConnected),
    "trial 1's row was replaced, not updated in place"
  );
  assert.equal(
    (await view.locator('tr[data-trial="3"] .nbs-status').innerText()).trim(),
    'succeeded'
  );
  assert.deepEqual(await pointCounts(), [5, 3]);
  assert.equal((await pcLines()).length, 5);
  await until(
    page,
    async () => (await row.locator('.nbs-sweep-progress').innerText()).trim(),
    '4/6',
    'the list row follows'
  );

  step('cancel: the API is called, the sweep and its running trial end');
  await view.locator('.nbs-sweep-cancel').click();
  await until(
    page,
    () => view.getAttribute('data-status'),
    'CANCELLED',
    'sweep status'
  );
  assert.equal(
    (await view.locator('.nbs-job-header .nbs-status').innerText()).trim(),
    'cancelled'
  );
  assert.equal(
    (await view.locator('tr[data-trial="4"] .nbs-status').innerText()).trim(),
    'cancelled'
  );
  assert.equal(await view.locator('.nbs-sweep-cancel').count(), 0);
  await until(
    page,
    async () => (await row.locator('.nbs-status').innerText()).trim(),
    'cancelled',
    'the list row follows the cancel'
  );
  await panel.screenshot({ path: join(SHOTS, 'sweeps-cancelled.png') });

  step('the jobs list gathers the trial jobs under their sweep');
  await fold(['Jobs']);
  const jobs = panel.locator('.nbs-jobs');
  const group = jobs.locator(`.nbs-sweep-group[data-sweep-id="${SWEEP}"]`);
  await group.waitFor({ timeout: 30_000 });
  const topLevel = () =>
    jobs
      .locator(':scope .nbs-list[aria-label="Jobs"] > li')
      .evaluateAll(lis =>
        lis.map(
          li =>
            li.getAttribute('data-job-id') ?? li.getAttribute('data-sweep-id')
        )
      );
  assert.deepEqual(await topLevel(), ['plain-job', SWEEP]);
  assert.match(await group.innerText(), /2 trials/);
  assert.equal(await group.locator('.nbs-sweep-trials .nbs-row').count(), 0);
  await group.locator('.nbs-sweep-toggle').click();
  const trialJobs = await group
    .locator('.nbs-sweep-trials .nbs-row')
    .evaluateAll(rs => rs.map(r => r.getAttribute('data-job-id')));
  assert.deepEqual(trialJobs, ['trial-job-0', 'trial-job-1']);
  await panel.screenshot({ path: join(SHOTS, 'sweeps-jobs.png') });
}

await runInChromium(sweeps, SHOTS);
