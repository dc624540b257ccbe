/** The Pipelines section (runs) and a run's DAG, steps coloured by status; cancel a run. */
import { showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

import { cancelRun, getRun, listRuns } from '../api/client';
import { DescribeRun, PipelineStep } from '../api/models';
import { errorText, IPanelContext, usePoll } from '../context';
import { ACTIVE, formatTime, statusClass } from '../format';
import { Pager, useCursorPages } from './Pager';

const PAGE = 25;

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const time = (v: unknown): number | null => (typeof v === 'number' ? v : null);

export function PipelinesSection(props: { ctx: IPanelContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const [runs, setRuns] = React.useState<DescribeRun[]>([]);
  const [error, setError] = React.useState<string | null>(null);
  const pages = useCursorPages();

  usePoll(ctx, async () => {
    try {
      const page = await listRuns({ limit: PAGE, after: pages.after });
      setRuns(page.runs);
      pages.setNext(page.next);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [pages.after]);

  return (
    <div className="nbs-section nbs-pipelines">
      {error && <div className="nbs-error">{error}</div>}
      {runs.length === 0 && !error && (
        <div className="nbs-muted nbs-empty">
          {trans.__(
            'No pipeline runs. Use "Run as pipeline" in a notebook toolbar.'
          )}
        </div>
      )}
      <ul className="nbs-list" aria-label={trans.__('Pipeline runs')}>
        {runs.map(run => (
          <li key={run.id} data-run-id={run.id}>
            <button
              type="button"
              className="nbs-link"
              onClick={() => ctx.openRun(run.id)}
            >
              {str(run.name) ?? str(run.pipeline) ?? run.id}
            </button>{' '}
            <span className={statusClass(run.status)}>
              {run.status.toLowerCase()}
            </span>{' '}
            <span className="nbs-muted">
              {formatTime(time(run.started) ?? time(run.created))} ·{' '}
              {trans._n('%1 step', '%1 steps', (run.steps ?? []).length)}
            </span>
          </li>
        ))}
      </ul>
      <Pager
        pages={pages}
        trans={trans}
        backLabel={trans.__('Newer')}
        forwardLabel={trans.__('Older')}
      />
    </div>
  );
}

/** Columns by depth (longest path from a root), so every edge points right. */
export function layers(steps: PipelineStep[]): PipelineStep[][] {
  const byName = new Map(steps.map(s => [s.name, s]));
  const depth = new Map<string, number>();
  const visit = (name: string, seen: Set<string>): number => {
    if (depth.has(name)) {
      return depth.get(name) as number;
    }
    if (seen.has(name)) {
      return 0; // a cycle cannot come from the engine; never loop on one
    }
    seen.add(name);
    const deps = (byName.get(name)?.depends_on ?? []).filter(d =>
      byName.has(d)
    );
    const d = deps.length ? 1 + Math.max(...deps.map(x => visit(x, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  steps.forEach(s => visit(s.name, new Set()));
  const cols: PipelineStep[][] = [];
  for (const s of steps) {
    const d = depth.get(s.name) ?? 0;
    (cols[d] = cols[d] ?? []).push(s);
  }
  return cols.filter(Boolean);
}

const BOX = { w: 150, h: 40, gapX: 50, gapY: 16 };

/** Why a step came from the cache and what went wrong, in the words the tooltip and detail lines use. */
export function stepDetail(
  trans: TranslationBundle,
  s: PipelineStep
): { cache: string | null; error: string | null; attempts: string | null } {
  const reason = s.cache_reason ?? '';
  let cache: string | null = null;
  if (s.cached) {
    // the engine says "hit: unchanged since run X"; "cached: " already says it was a hit
    cache = trans.__('cached: %1', reason.replace(/^hit:\s*/, '') || '–');
  } else if (reason) {
    cache = reason;
  }
  const attempts =
    typeof s.attempts === 'number' && s.attempts > 1
      ? trans.__('attempt %1', s.attempts)
      : null;
  return { cache, error: s.error ?? null, attempts };
}

export function RunView(props: {
  ctx: IPanelContext;
  runId: string;
  onTitle: (title: string) => void;
}): JSX.Element {
  const { ctx, runId } = props;
  const { trans } = ctx;
  const [run, setRun] = React.useState<DescribeRun | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [cancelling, setCancelling] = React.useState(false);

  usePoll(ctx, async () => {
    if (run && !ACTIVE.includes(run.status.toUpperCase())) {
      return;
    }
    try {
      const r = await getRun(runId);
      setRun(r);
      props.onTitle(str(r.name) ?? r.id);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [runId, run?.status]);

  if (!run) {
    return <div className="nbs-run-view">{error ?? trans.__('Loading…')}</div>;
  }
  const cols = layers(run.steps ?? []);
  const pos = new Map<string, { x: number; y: number }>();
  cols.forEach((col, i) =>
    col.forEach((s, j) =>
      pos.set(s.name, {
        x: 10 + i * (BOX.w + BOX.gapX),
        y: 10 + j * (BOX.h + BOX.gapY)
      })
    )
  );
  const width = 20 + cols.length * (BOX.w + BOX.gapX);
  const height =
    20 + Math.max(1, ...cols.map(c => c.length)) * (BOX.h + BOX.gapY);
  const output = (s: PipelineStep) =>
    str(s.output_notebook) ?? str(s.output) ?? str(s.notebook);
  const active = ACTIVE.includes(run.status.toUpperCase());
  const options = (run.options ?? {}) as Record<string, unknown>;
  // a detach=False run is stopped where it runs (Ctrl-C); the server refuses it with a 409
  const elsewhere = options.in_process === true;
  const cancel = async () => {
    setCancelling(true);
    try {
      setRun(await cancelRun(run.id));
    } catch (e) {
      void showErrorMessage(trans.__('nbscale'), errorText(e));
    } finally {
      setCancelling(false);
    }
  };
  const details = (run.steps ?? [])
    .map(s => ({ step: s, ...stepDetail(trans, s) }))
    .filter(d => d.cache || d.error || d.attempts);

  return (
    <div className="nbs-run-view" data-run-id={run.id}>
      <header className="nbs-job-header">
        <h2>{str(run.name) ?? run.id}</h2>
        <span
          className={statusClass(run.status)}
          aria-label={trans.__('Run status')}
        >
          {run.status.toLowerCase()}
        </span>
        <span className="nbs-muted">{run.id}</span>
        {active && (
          <div className="nbs-actions">
            <button
              type="button"
              className="jp-mod-styled jp-mod-warn"
              disabled={cancelling || elsewhere}
              title={
                elsewhere
                  ? trans.__(
                      'This run belongs to another process: stop it there (Ctrl-C).'
                    )
                  : trans.__('Stop the run and its kernels')
              }
              onClick={() => void cancel()}
            >
              {cancelling ? trans.__('Cancelling…') : trans.__('Cancel run')}
            </button>
          </div>
        )}
      </header>
      {error && <div className="nbs-error">{error}</div>}
      {str(run.error) && <div className="nbs-error">{str(run.error)}</div>}
      <svg
        width={width}
        height={height}
        className="nbs-dag"
        role="img"
        aria-label={trans.__('Pipeline graph')}
      >
        <defs>
          <marker
            id="nbs-arrow"
            markerWidth="8"
            markerHeight="8"
            refX="8"
            refY="4"
            orient="auto"
          >
            <path d="M0,0 L8,4 L0,8 z" className="nbs-dag-arrow" />
          </marker>
        </defs>
        {(run.steps ?? []).flatMap(s =>
          (s.depends_on ?? [])
            .filter(d => pos.has(d))
            .map(d => {
              const a = pos.get(d) as { x: number; y: number };
              const b = pos.get(s.name) as { x: number; y: number };
              return (
                <line
                  key={`${d}->${s.name}`}
                  x1={a.x + BOX.w}
                  y1={a.y + BOX.h / 2}
                  x2={b.x}
                  y2={b.y + BOX.h / 2}
                  className="nbs-dag-edge"
                  markerEnd="url(#nbs-arrow)"
                />
              );
            })
        )}
        {(run.steps ?? []).map(s => {
          const p = pos.get(s.name) as { x: number; y: number };
          const target = output(s);
          const d = stepDetail(trans, s);
          const tip = [
            `${s.name}: ${s.status.toLowerCase()}`,
            d.cache,
            d.attempts,
            d.error
          ].filter(Boolean);
          return (
            <g
              key={s.name}
              className={`nbs-dag-step nbs-step-${s.status.toLowerCase()}`}
              data-step={s.name}
              transform={`translate(${p.x},${p.y})`}
              onClick={() => target && ctx.openPath(target)}
            >
              <title>{tip.join('\n')}</title>
              <rect width={BOX.w} height={BOX.h} rx={6} />
              <text x={8} y={16}>
                {s.name}
              </text>
              <text x={8} y={32} className="nbs-dag-sub">
                {s.status.toLowerCase()}
                {s.cached ? ` · ${trans.__('cached')}` : ''}
              </text>
            </g>
          );
        })}
      </svg>
      {details.length > 0 && (
        <ul className="nbs-step-details" aria-label={trans.__('Step details')}>
          {details.map(d => (
            <li key={d.step.name} data-step={d.step.name}>
              <strong>{d.step.name}</strong>{' '}
              {d.cache && <span className="nbs-muted">{d.cache}</span>}
              {d.attempts && (
                <span className="nbs-muted">
                  {' · '}
                  {d.attempts}
                </span>
              )}
              {d.error && <pre className="nbs-step-error">{d.error}</pre>}
            </li>
          ))}
        </ul>
      )}
      <p className="nbs-muted">
        {trans.__('Click a step to open its executed notebook.')}
      </p>
    </div>
  );
}
