/** What the panel's React parts need from Lab, passed down instead of imported. */
import { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

export interface IPanelContext {
  trans: TranslationBundle;
  /** Milliseconds between refreshes (from the settings registry). */
  refreshMs: () => number;
  /** Refresh only while the user can see the view. */
  isVisible: () => boolean;
  openJob: (id: string) => void;
  openRun: (id: string) => void;
  openPath: (path: string) => void;
  /** Insert a cell with `%attach JOB` below the active one; false without a notebook. */
  insertAttach: (jobId: string) => boolean;
}

/**
 * Call `load` now and every refresh interval while `ctx.isVisible()`; the
 * returned function forces a refresh (after an action).
 */
export function usePoll(
  ctx: IPanelContext,
  load: () => Promise<void>,
  deps: React.DependencyList
): () => void {
  const busy = React.useRef(false);
  const tick = React.useCallback(() => {
    if (busy.current || !ctx.isVisible()) {
      return;
    }
    busy.current = true;
    load().finally(() => {
      busy.current = false;
    });
  }, deps);
  React.useEffect(() => {
    tick();
    const timer = window.setInterval(tick, ctx.refreshMs());
    return () => window.clearInterval(timer);
  }, [tick]);
  return tick;
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
