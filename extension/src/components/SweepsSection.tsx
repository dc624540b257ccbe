/**
 * The Sweeps section: sweeps newest first (status, trials done of planned, best
 * objective); a selected sweep's trials best first, updated in place while it
 * runs, the objective against the trial number (Chart.tsx), and the trials'
 * parameters as parallel coordinates (SVG drawn here from the data).
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

import { cancelSweep, getSweep, listSweeps } from '../api/client';
import { DescribeSweep, SweepSummary, SweepTrial } from '../api/models';
import { errorText, IPanelContext, usePoll } from '../context';
import {
  formatCost,
  formatDuration,
  statusClass,
  statusLabel
} from '../format';
import { LineChart } from './Chart';

const LIMIT = 50;
/** A sweep in one of these may still change: its view keeps polling. */
const LIVE = ['RUNNING', 'STOPPED'];

export function sweepStatusLabel(
  trans: TranslationBundle,
  status: string
): string {
  switch (status.toUpperCase()) {
    case 'PRUNED':
      return trans.__('pruned');
    case 'STOPPED':
      return trans.__('stopped');
    default:
      return statusLabel(trans, status);
  }
}

/** An objective value or parameter as the tables show it. */
export function formatValue(v: unknown): string {
  if (v === null || v === undefined) {
    return '–';
  }
  if (typeof v === 'number') {
    if (Number.isInteger(v)) {
      return String(v);
    }
    // four significant digits, no trailing zeros (as the notebook's table shows them)
    return Math.abs(v) >= 1e6 || Math.abs(v) < 1e-3
      ? v.toExponential(2)
      : String(Number(v.toPrecision(4)));
  }
  return String(v);
}

/** The metric of "val_loss:min" and whether lower is better. */
export function parseObjective(objective: string): {
  metric: string;
  minimize: boolean;
} {
  const at = objective.lastIndexOf(':');
  const metric = at > 0 ? objective.slice(0, at) : objective;
  return { metric, minimize: !objective.endsWith(':max') };
}

/** A trial's objective for ranking and plotting: its final value, else its latest. */
const score = (t: SweepTrial): number | null =>
  typeof t.value === 'number'
    ? t.value
    : typeof t.last === 'number'
      ? t.last
      : null;

export function SweepsSection(props: { ctx: IPanelContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const [sweeps, setSweeps] = React.useState<SweepSummary[]>([]);
  const [error, setError] = React.useState<string | null>(null);
  const [selected, setSelected] = React.useState<string | null>(null);
  const chosen = sweeps.find(s => s.id === selected);

  const refresh = usePoll(ctx, async () => {
    try {
      const page = await listSweeps({ limit: LIMIT });
      setSweeps(page.sweeps);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, []);

  return (
    <div className="nbs-section nbs-sweeps">
      {error && <div className="nbs-error">{error}</div>}
      {sweeps.length === 0 && !error && (
        <div className="nbs-muted nbs-empty">
          {trans.__(
            'No sweeps yet. Use %%train --sweep in a cell or nbscale sweep.'
          )}
        </div>
      )}
      <ul className="nbs-list" aria-label={trans.__('Sweeps')}>
        {sweeps.map(s => {
          const { metric } = parseObjective(s.objective);
          return (
            <li
              key={s.id}
              className={`nbs-row nbs-sweep-row${
                s.id === selected ? ' nbs-selected' : ''
              }`}
              data-sweep-id={s.id}
              title={s.id}
              aria-selected={s.id === selected}
              onClick={() => setSelected(s.id === selected ? null : s.id)}
            >
              <div className="nbs-row-main">
                <button className="nbs-link" type="button">
                  {s.name}
                </button>
                <span className={statusClass(s.status)}>
                  {sweepStatusLabel(trans, s.status)}
                </span>
                <span
                  className="nbs-sweep-progress"
                  title={trans.__('Trials ended of planned')}
                >
                  {trans.__('%1/%2', s.done, s.planned)}
                </span>
              </div>
              <div className="nbs-row-sub nbs-muted">
                <span title={trans.__('Backend')}>{s.backend}</span>
                <span
                  className="nbs-sweep-best"
                  title={trans.__('Best %1', s.objective)}
                >
                  {s.best_value === null
                    ? trans.__('no result yet')
                    : trans.__(
                        'best %1 %2 (trial %3)',
                        metric,
                        formatValue(s.best_value),
                        s.best_trial ?? '–'
                      )}
                </span>
                {s.running > 0 && (
                  <span>{trans._n('%1 running', '%1 running', s.running)}</span>
                )}
                {s.cost !== null && (
                  <span title={trans.__('Cost')}>{formatCost(s.cost)}</span>
                )}
              </div>
            </li>
          );
        })}
      </ul>
      {selected && (
        <SweepDetail
          key={selected}
          ctx={ctx}
          sweepId={selected}
          trialsAreJobs={chosen?.backend_type === 'local'}
          onChanged={refresh}
        />
      )}
    </div>
  );
}

/** One sweep: header and cancel, the trials table, the chart, parallel coordinates. */
export function SweepDetail(props: {
  ctx: IPanelContext;
  sweepId: string;
  /** Whether a trial's `job_id` is an nbscale job (local sweeps), not a platform's object. */
  trialsAreJobs: boolean;
  onChanged: () => void;
}): JSX.Element {
  const { ctx, sweepId } = props;
  const { trans } = ctx;
  const [sweep, setSweep] = React.useState<DescribeSweep | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [cancelling, setCancelling] = React.useState(false);

  usePoll(ctx, async () => {
    if (sweep && !LIVE.includes(sweep.status.toUpperCase())) {
      return;
    }
    try {
      setSweep(await getSweep(sweepId));
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [sweepId, sweep?.status]);

  if (!sweep) {
    return (
      <div className="nbs-sweep-view">{error ?? trans.__('Loading…')}</div>
    );
  }
  const trials = sweep.trials ?? [];
  const { metric, minimize } = parseObjective(sweep.objective);
  const bestNumber = sweep.best?.number ?? null;
  const names: string[] = [];
  for (const t of trials) {
    for (const k of Object.keys(t.params)) {
      if (!names.includes(k)) {
        names.push(k);
      }
    }
  }
  const cancel = async () => {
    setCancelling(true);
    try {
      setSweep(await cancelSweep(sweep.id));
      props.onChanged();
    } catch (e) {
      void showErrorMessage(trans.__('nbscale'), errorText(e));
    } finally {
      setCancelling(false);
    }
  };
  const byNumber = [...trials].sort((a, b) => a.number - b.number);
  const scored = byNumber.filter(t => score(t) !== null);
  const bestSoFar: Array<[number, number]> = [];
  let best: number | null = null;
  for (const t of scored) {
    if (t.status !== 'SUCCEEDED' || typeof t.value !== 'number') {
      continue;
    }
    best =
      best === null
        ? t.value
        : minimize
          ? Math.min(best, t.value)
          : Math.max(best, t.value);
    bestSoFar.push([t.number, best]);
  }

  return (
    <div
      className="nbs-sweep-view"
      data-sweep-id={sweep.id}
      data-status={sweep.status}
    >
      <header className="nbs-job-header">
        <h3>{sweep.name}</h3>
        <span
          className={statusClass(sweep.status)}
          aria-label={trans.__('Sweep status')}
        >
          {sweepStatusLabel(trans, sweep.status)}
        </span>
        <span className="nbs-muted">
          {trans.__(
            '%1 of %2 trials · %3',
            trials.length,
            sweep.planned,
            sweep.objective
          )}
        </span>
        {LIVE.includes(sweep.status.toUpperCase()) && (
          <div className="nbs-actions">
            <button
              type="button"
              className="jp-mod-styled jp-mod-warn nbs-sweep-cancel"
              disabled={cancelling}
              title={trans.__('Stop the sweep and its running trials')}
              onClick={() => void cancel()}
            >
              {cancelling ? trans.__('Cancelling…') : trans.__('Cancel sweep')}
            </button>
          </div>
        )}
      </header>
      {error && <div className="nbs-error">{error}</div>}
      {sweep.error && <div className="nbs-error">{sweep.error}</div>}
      {(sweep.notes ?? []).map(n => (
        <div key={n} className="nbs-muted nbs-sweep-note">
          {n}
        </div>
      ))}
      <div className="nbs-table-scroll">
        <table className="nbs-trials" aria-label={trans.__('Trials')}>
          <thead>
            <tr>
              <th>{trans.__('trial')}</th>
              {names.map(n => (
                <th key={n} className="nbs-param">
                  {n}
                </th>
              ))}
              <th>{trans.__('last')}</th>
              <th title={trans.__('The final value of %1', metric)}>
                {sweep.objective}
              </th>
              <th>{trans.__('status')}</th>
              <th>{trans.__('duration')}</th>
              <th>{trans.__('cost')}</th>
            </tr>
          </thead>
          <tbody>
            {trials.map(t => (
              <tr
                key={t.number}
                data-trial={t.number}
                data-status={t.status}
                className={t.number === bestNumber ? 'nbs-best' : undefined}
                title={t.error ?? undefined}
              >
                <td>
                  {t.job_id && props.trialsAreJobs ? (
                    <button
                      type="button"
                      className="nbs-link"
                      title={trans.__('Open the trial job %1', t.job_id)}
                      onClick={() => ctx.openJob(t.job_id as string)}
                    >
                      {t.number}
                    </button>
                  ) : (
                    t.number
                  )}
                  {t.number === bestNumber && (
                    <span
                      className="nbs-best-mark"
                      aria-label={trans.__('best trial')}
                      title={trans.__('best trial')}
                    >
                      {' ★'}
                    </span>
                  )}
                </td>
                {names.map(n => (
                  <td key={n} className="nbs-param">
                    {formatValue(t.params[n])}
                  </td>
                ))}
                <td className="nbs-last">{formatValue(t.last)}</td>
                <td className="nbs-value">{formatValue(t.value)}</td>
                <td>
                  <span className={statusClass(t.status)}>
                    {sweepStatusLabel(trans, t.status)}
                  </span>
                </td>
                <td>{formatDuration(t.duration)}</td>
                <td>{formatCost(t.cost)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <div className="nbs-sweep-objective">
        <LineChart
          width={240}
          title={trans.__('%1 by trial', metric)}
          series={[
            {
              name: trans.__('trial'),
              points: scored.map(t => [t.number, score(t) as number])
            },
            { name: trans.__('best so far'), points: bestSoFar }
          ]}
        />
      </div>
      <ParallelCoordinates
        trans={trans}
        names={names}
        trials={trials}
        metric={metric}
        minimize={minimize}
        best={bestNumber}
      />
    </div>
  );
}

interface IAxis {
  name: string;
  /** Where a value sits on the axis, 0 (bottom) to 1 (top); null when it has none. */
  at: (v: unknown) => number | null;
  low: string;
  high: string;
}

/** A numeric axis (log scale when the values are positive and span two decades), else one tick per distinct value. */
export function axisFor(name: string, values: unknown[]): IAxis {
  const present = values.filter(v => v !== null && v !== undefined);
  const numeric =
    present.length > 0 &&
    present.every(v => typeof v === 'number' && Number.isFinite(v));
  if (numeric) {
    const nums = present as number[];
    const [lo, hi] = [Math.min(...nums), Math.max(...nums)];
    const log = lo > 0 && hi / lo >= 100;
    const f = (v: number) => (log ? Math.log10(v) : v);
    const span = f(hi) - f(lo);
    return {
      name,
      at: v =>
        typeof v === 'number' && Number.isFinite(v)
          ? span
            ? (f(v) - f(lo)) / span
            : 0.5
          : null,
      low: formatValue(lo),
      high: formatValue(hi)
    };
  }
  const distinct = [...new Set(present.map(v => String(v)))].sort();
  return {
    name,
    at: v =>
      v === null || v === undefined
        ? null
        : distinct.length > 1
          ? distinct.indexOf(String(v)) / (distinct.length - 1)
          : 0.5,
    low: distinct[0] ?? '–',
    high: distinct[distinct.length - 1] ?? '–'
  };
}

/** Every trial a line across one axis per parameter and one for the objective; the better, the darker. */
export function ParallelCoordinates(props: {
  trans: TranslationBundle;
  names: string[];
  trials: SweepTrial[];
  metric: string;
  minimize: boolean;
  best: number | null;
}): JSX.Element {
  const { trans, names, trials } = props;
  const axes = [
    ...names.map(n =>
      axisFor(
        n,
        trials.map(t => t.params[n])
      )
    ),
    axisFor(props.metric, trials.map(score))
  ];
  // fits the side panel's default width; wider spaces scroll sideways
  const pad = { left: 24, right: 44, top: 24, bottom: 22 };
  const gap = Math.max(60, 180 / Math.max(1, axes.length - 1));
  const width = pad.left + pad.right + gap * Math.max(1, axes.length - 1);
  const height = 170;
  const x = (i: number) => pad.left + i * gap;
  const y = (at: number) =>
    pad.top + (1 - at) * (height - pad.top - pad.bottom);
  const objective = axes[axes.length - 1];
  // the shade of a line: how good its objective is (1 the best seen, 0 the worst)
  const goodness = (t: SweepTrial): number | null => {
    const at = objective.at(score(t));
    return at === null ? null : props.minimize ? 1 - at : at;
  };
  return (
    <figure
      className="nbs-parcoords-figure"
      aria-label={trans.__('Parameters of each trial')}
    >
      <figcaption className="nbs-chart-title">
        {trans.__('Parameters and %1', props.metric)}
      </figcaption>
      <svg
        className="nbs-parcoords"
        width={width}
        height={height}
        role="img"
        aria-label={trans.__('Parallel coordinates of the trials')}
      >
        {trials.map(t => {
          const pts = axes
            .map((a, i) => {
              const v = i < names.length ? t.params[a.name] : score(t);
              const at = a.at(v);
              return at === null ? null : `${x(i)},${y(at)}`;
            })
            .filter(Boolean);
          const g = goodness(t);
          return (
            <polyline
              key={t.number}
              data-trial={t.number}
              className={`nbs-parcoords-line nbs-parcoords-${t.status.toLowerCase()}${
                t.number === props.best ? ' nbs-best' : ''
              }`}
              points={pts.join(' ')}
              fill="none"
              strokeOpacity={g === null ? 0.35 : 0.25 + 0.75 * g}
            >
              <title>
                {trans.__(
                  'trial %1: %2',
                  t.number,
                  sweepStatusLabel(props.trans, t.status)
                )}
              </title>
            </polyline>
          );
        })}
        {axes.map((a, i) => (
          <g
            key={a.name}
            className="nbs-parcoords-axis"
            data-axis={a.name}
            transform={`translate(${x(i)},0)`}
          >
            <line y1={y(0)} y2={y(1)} className="nbs-axis" />
            <text
              y={pad.top - 10}
              textAnchor="middle"
              className="nbs-axis-name"
            >
              {a.name}
            </text>
            <text y={y(1) - 2} x={4}>
              {a.high}
            </text>
            <text y={y(0) + 12} x={4}>
              {a.low}
            </text>
          </g>
        ))}
      </svg>
    </figure>
  );
}
