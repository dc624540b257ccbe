// One headless Chromium (Debian's, through playwright-core) for a UI test script:
// runs `steps(page)`, fails on nbscale errors in the browser console (unless the
// scenario expects them), accepts "leave this page?" dialogs, screenshots a failure
// into `shots`, and exits the process with 0 or 1.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

/** An environment variable the script cannot run without. */
export const env = name => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set`);
  return value;
};

export const step = text => console.log(`[ui] ${text}`);

export async function runInChromium(
  steps,
  shots,
  { expectNbscaleErrors = false } = {}
) {
  const userData = mkdtempSync(join(tmpdir(), 'nbs-chromium-'));
  const context = await chromium.launchPersistentContext(userData, {
    executablePath: process.env.NBS_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync'
    ]
  });
  const consoleErrors = [];
  let failed = false;
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', msg => {
      if (msg.type() === 'error' || msg.text().startsWith('nbscale:')) {
        consoleErrors.push(msg.text());
      }
    });
    page.on('dialog', dialog => void dialog.accept()); // "leave this page?"
    await steps(page);
    const ours = consoleErrors.filter(
      t => /nbscale/i.test(t) && !expectNbscaleErrors
    );
    assert.deepEqual(ours, [], 'nbscale errors in the browser console');
    console.log('[ui] all good');
  } catch (error) {
    failed = true;
    console.error(error);
    const page = context.pages()[0];
    if (page) {
      await page
        .screenshot({ path: join(shots, 'failure.png') })
        .catch(() => {});
    }
    console.error('browser console errors:', consoleErrors.join('\n'));
  } finally {
    await context.close();
    rmSync(userData, { recursive: true, force: true });
  }
  process.exit(failed ? 1 : 0);
}
