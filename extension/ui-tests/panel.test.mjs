// Drives the nbscale panel in a real Chromium against a JupyterLab started by
// tests/ui/test_panel.py. Exits non-zero on the first failed expectation.
//
// Env: NBS_URL (http://127.0.0.1:PORT), NBS_TOKEN, NBS_NOTEBOOK, NBS_SLOW_NOTEBOOK,
// NBS_ENDPOINT, NBS_LOG_TEXT, NBS_PIPELINE_RUN (a finished run), NBS_SLOW_RUN (a run
// whose first step sleeps), NBS_SHOTS (directory for screenshots),
// NBS_CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { env, runInChromium, step } from './browser.mjs';

const URL_ = env('NBS_URL');
const TOKEN = env('NBS_TOKEN');
const SCENARIO = process.env.NBS_SCENARIO || 'full';
const NOTEBOOK = env('NBS_NOTEBOOK');
// a notebook that trains through %%train starts a job of its own
const NESTED_JOB = process.env.NBS_NESTED_JOB || '';
const SHOTS = env('NBS_SHOTS');
const JOB_TIMEOUT = 180_000;

/** Page object for JupyterLab with the nbscale panel. */
class Lab {
  constructor(page) {
    this.page = page;
  }

  async open(path, ui = 'lab') {
    const where = ui === 'lab' ? `lab/tree/${path}` : `notebooks/${path}`;
    // reset: a restored workspace would reopen (and activate) earlier tabs
    await this.page.goto(`${URL_}/${where}?reset&token=${TOKEN}`);
    await this.page
      .locator('.jp-NotebookPanel:visible .nbs-run-as-job')
      .waitFor({ timeout: 60_000 });
    // the kernel starting is not our business; the toolbar is
  }

  panel() {
    return this.page.locator('#nbscale-panel');
  }

  async showPanel() {
    if (!(await this.panel().isVisible())) {
      await this.page
        .locator('.lm-TabBar-tab[data-id="nbscale-panel"]')
        .click();
    }
    await this.panel().waitFor({ state: 'visible' });
  }

  /** Drag the sidebar wider, as a user would to read the panel. */
  async widenSidebar(by) {
    const handle = this.page
      .locator('#jp-main-split-panel > .lm-SplitPanel-handle:visible')
      .first();
    const box = await handle.boundingBox();
    assert.ok(box, 'sidebar handle');
    const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
    await this.page.mouse.move(x, y);
    await this.page.mouse.down();
    await this.page.mouse.move(x + by, y, { steps: 5 });
    await this.page.mouse.up();
  }

  async runAsJob(parameters) {
    await this.page
      .locator('.jp-NotebookPanel:visible .nbs-run-as-job')
      .click();
    const dialog = this.page.locator('.jp-Dialog');
    await dialog.waitFor();
    await dialog
      .locator('.nbs-estimate', { hasText: 'Estimated cost' })
      .waitFor();
    if (parameters) {
      await dialog.locator('textarea[name="parameters"]').fill(parameters);
    }
    return dialog;
  }

  async accept(dialog) {
    await dialog.locator('.jp-Dialog-button.jp-mod-accept').click();
  }

  jobView() {
    return this.page.locator('.jp-MainAreaWidget:visible .nbs-job-view');
  }

  async waitJobStatus(label) {
    await this.jobView()
      .locator('.nbs-job-header .nbs-status', { hasText: label })
      .waitFor({ timeout: JOB_TIMEOUT });
  }
}

/** The panel against a working server: submit, follow, charts, DAG, cancel, Notebook 7. */
async function full(page, lab) {
  const SLOW = env('NBS_SLOW_NOTEBOOK');
  const ENDPOINT = env('NBS_ENDPOINT');
  const LOG_TEXT = env('NBS_LOG_TEXT');
  const PIPELINE_RUN = env('NBS_PIPELINE_RUN');
  const SLOW_RUN = env('NBS_SLOW_RUN');
  step('open the notebook and the panel');
  await lab.open(NOTEBOOK);
  await lab.showPanel();
  await lab.widenSidebar(200);
  const panel = lab.panel();
  for (const title of ['Jobs', 'Pipelines', 'Endpoints']) {
    await panel
      .locator('.jp-AccordionPanel-title', { hasText: title })
      .waitFor();
  }
  assert.equal(
    await panel.locator('.nbs-server-notice:visible').count(),
    0,
    'server notice shown'
  );

  step('submit the notebook as a job from the toolbar');
  const dialog = await lab.runAsJob('{"epochs": 30}');
  assert.match(await dialog.locator('.nbs-estimate').innerText(), /\$0\.00/);
  await page.screenshot({ path: join(SHOTS, 'run-as-job-dialog.png') });
  await lab.accept(dialog);

  step('the job view follows it to SUCCEEDED with logs');
  await lab.jobView().waitFor({ timeout: 30_000 });
  await lab.waitJobStatus('succeeded');
  await lab
    .jobView()
    .locator('.nbs-log', { hasText: LOG_TEXT })
    .waitFor({ timeout: 30_000 });
  // the sidebar list agrees with the job view
  const jobId = await lab.jobView().getAttribute('data-job-id');
  const row = panel.locator(`.nbs-jobs .nbs-row[data-job-id="${jobId}"]`);
  await row
    .locator('.nbs-status', { hasText: 'succeeded' })
    .waitFor({ timeout: 30_000 });
  assert.match(await row.innerText(), /\$0\.00/);

  step('insert %attach for the job into the notebook');
  await lab.jobView().getByRole('button', { name: 'Insert %attach' }).click();
  await page
    .locator('.jp-NotebookPanel:visible .jp-Cell', {
      hasText: `%attach ${jobId}`
    })
    .waitFor({ timeout: 10_000 });
  await lab.open(NOTEBOOK); // back to a clean layout (the edit is not saved)
  await lab.showPanel();
  await lab.widenSidebar(200);

  if (NESTED_JOB) {
    step('the training job it started, with its loss curve');
    await panel
      .locator('.nbs-jobs .nbs-row', { hasText: NESTED_JOB })
      .first()
      .click();
    await lab.waitJobStatus('succeeded');
  }
  await lab
    .jobView()
    .locator('.nbs-metrics polyline')
    .first()
    .waitFor({ timeout: 30_000 });
  await page.screenshot({ path: join(SHOTS, 'panel-job.png') });

  step("an endpoint's latency and throughput charts");
  await panel
    .locator('.nbs-endpoints .nbs-link', { hasText: ENDPOINT })
    .click();
  const detail = panel.locator(
    `.nbs-endpoint-detail[data-endpoint="${ENDPOINT}"]`
  );
  await detail
    .locator('figure[aria-label="Latency"] polyline')
    .first()
    .waitFor({ timeout: 30_000 });
  await detail
    .locator('figure[aria-label="Throughput"] polyline')
    .first()
    .waitFor();
  assert.match(
    await detail.locator('.nbs-facts').first().innerText(),
    /\d+(\.\d+)? ms/
  );
  // fold the other sections so the endpoint fills the panel in the screenshot
  const pipelinesTitle = panel.locator('.jp-AccordionPanel-title', {
    hasText: 'Pipelines'
  });
  const jobsTitle = panel.locator('.jp-AccordionPanel-title', {
    hasText: 'Jobs'
  });
  await pipelinesTitle.click();
  await jobsTitle.click();
  await page.screenshot({ path: join(SHOTS, 'panel-endpoint.png') });
  await pipelinesTitle.click();
  await jobsTitle.click();

  step('a pipeline run as a DAG coloured by status');
  await panel
    .locator(`.nbs-pipelines li[data-run-id="${PIPELINE_RUN}"] .nbs-link`)
    .click();
  const runView = page.locator(
    `.jp-MainAreaWidget:visible .nbs-run-view[data-run-id="${PIPELINE_RUN}"]`
  );
  const dag = runView.locator('.nbs-dag');
  await dag.waitFor();
  await dag
    .locator('.nbs-dag-step.nbs-step-succeeded')
    .last()
    .waitFor({ timeout: 60_000 });
  assert.ok(
    (await dag.locator('.nbs-dag-edge').count()) >= 1,
    'the DAG has edges'
  );
  step('each step says why it ran (tooltip and detail line); no cancel');
  assert.match(
    await dag.locator('.nbs-dag-step[data-step="train"] title').textContent(),
    /^train: succeeded\nmiss: first run of this step$/
  );
  assert.match(
    await runView
      .locator('.nbs-step-details li[data-step="train"]')
      .innerText(),
    /miss: first run of this step/
  );
  assert.equal(
    await runView.getByRole('button', { name: 'Cancel run' }).count(),
    0,
    'a finished run offers no cancel'
  );
  await page.screenshot({ path: join(SHOTS, 'panel-pipeline.png') });

  step('cancel a running pipeline');
  await panel
    .locator(`.nbs-pipelines li[data-run-id="${SLOW_RUN}"] .nbs-link`)
    .click();
  const slowView = page.locator(
    `.jp-MainAreaWidget:visible .nbs-run-view[data-run-id="${SLOW_RUN}"]`
  );
  await slowView
    .locator('.nbs-dag-step[data-step="wait"].nbs-step-running')
    .waitFor({ timeout: JOB_TIMEOUT });
  await slowView.getByRole('button', { name: 'Cancel run' }).click();
  await slowView
    .getByLabel('Run status')
    .filter({ hasText: 'cancelled' })
    .waitFor({ timeout: 90_000 });
  assert.equal(
    await slowView.locator('.nbs-dag-step.nbs-step-cancelled').count(),
    2,
    'both steps cancelled'
  );
  assert.equal(
    await slowView.getByRole('button', { name: 'Cancel run' }).count(),
    0,
    'no cancel once it ended'
  );

  step('cancel a running job');
  await lab.open(SLOW);
  await lab.showPanel();
  await lab.accept(await lab.runAsJob());
  await lab.waitJobStatus('running');
  await lab.jobView().getByRole('button', { name: 'Cancel job' }).click();
  await lab.waitJobStatus('cancelled');

  step('the same extension in Notebook 7');
  await lab.open(NOTEBOOK, 'notebook');
  const nb7 = await lab.runAsJob();
  assert.match(await nb7.locator('.nbs-estimate').innerText(), /\$0\.00/);
  await nb7.locator('.jp-Dialog-button.jp-mod-reject').click();
  assert.equal(
    await page.locator('#nbscale-panel').count(),
    1,
    'panel in Notebook 7'
  );
}

/** Lab with the labextension but no server extension: the panel says what to do. */
async function missingServer(lab) {
  step('the panel without its server extension');
  await lab.open(NOTEBOOK);
  await lab.showPanel();
  const notice = lab.panel().locator('.nbs-server-notice[role="alert"]');
  await notice.waitFor({ timeout: 30_000 });
  assert.match(
    await notice.innerText(),
    /server extension is not running.*jupyter server extension enable nbscale\.server_ext/
  );
}

await runInChromium(
  async page => {
    const lab = new Lab(page);
    if (SCENARIO === 'missing-server') {
      await missingServer(lab);
    } else {
      await full(page, lab);
    }
  },
  SHOTS,
  // the missing-server scenario expects the panel's own warning in the console
  { expectNbscaleErrors: SCENARIO === 'missing-server' }
);
