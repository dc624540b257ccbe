/**
 * Monitoring in the Endpoints section: drift per window (drifting features
 * first), SageMaker-named metrics, and what runs now with its cost per hour.
 */
import { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

import { getEndpointDrift, listIdle } from '../api/client';
import { DriftWindow, EndpointDrift, IdleItem } from '../api/models';
import { errorText, IPanelContext, usePoll } from '../context';
import { formatCost, formatTime } from '../format';

const WINDOWS = ['5m', '1h', '1d'];
const FEATURES_SHOWN = 8;
const DRIFT_EVERY = 5;

const num = (v: unknown): number | null =>
  typeof v === 'number' && Number.isFinite(v) ? v : null;

function fmt(v: unknown, digits = 3): string {
  const n = num(v);
  return n === null ? '–' : n.toFixed(digits);
}

function fmtP(v: unknown): string {
  const n = num(v);
  return n === null ? '–' : n < 0.001 ? n.toExponential(1) : n.toFixed(3);
}

/** One look's row of the SageMaker-named series. */
type SageMakerRow = Record<string, unknown>;

/**
 * Invocations and errors over the last minute of looks, and the latest latency
 * percentiles (µs from the histograms, shown in ms), under SageMaker's names.
 */
export function SageMakerFacts(props: {
  metrics: Record<string, unknown>;
}): JSX.Element | null {
  const m = props.metrics;
  const rows = (
    Array.isArray(m.sagemaker_series) ? m.sagemaker_series : []
  ) as SageMakerRow[];
  if (rows.length === 0) {
    return null;
  }
  const newest = num(rows[rows.length - 1].Timestamp) ?? 0;
  const recent = rows.filter(r => (num(r.Timestamp) ?? 0) >= newest - 60);
  const sum = (k: string) =>
    recent.reduce((total, r) => total + (num(r[k]) ?? 0), 0);
  const latest = (k: string) => {
    for (let i = rows.length - 1; i >= 0; i--) {
      const n = num(rows[i][k]);
      if (n !== null) {
        return `${(n / 1000).toFixed(2)} ms`;
      }
    }
    return '–';
  };
  return (
    <dl className="nbs-facts nbs-sagemaker-metrics">
      <dt>Invocations (1 min)</dt>
      <dd>
        {sum('Invocations')} (4XX {sum('Invocation4XXErrors')}, 5XX{' '}
        {sum('Invocation5XXErrors')})
      </dd>
      <dt>ModelLatency p50 / p99</dt>
      <dd>
        {latest('ModelLatency_p50')} / {latest('ModelLatency_p99')}
      </dd>
      <dt>OverheadLatency p99</dt>
      <dd>{latest('OverheadLatency_p99')}</dd>
    </dl>
  );
}

function WindowRow(props: {
  trans: TranslationBundle;
  w: DriftWindow;
}): JSX.Element {
  const { trans, w } = props;
  const shown = w.features.slice(0, FEATURES_SHOWN);
  return (
    <div
      className={
        'nbs-drift-window' + (w.drifting.length ? ' nbs-drift-alert' : '')
      }
      data-window-start={w.start}
    >
      <div className="nbs-drift-head">
        <span>{formatTime(w.start)}</span>{' '}
        <span className="nbs-muted">
          {trans._n('%1 row', '%1 rows', w.rows)}
        </span>{' '}
        {w.skipped ? (
          <span className="nbs-muted">
            {trans.__('not tested: %1', w.skipped)}
          </span>
        ) : w.drifting.length ? (
          <b>
            {trans._n(
              'drift in %2 of %1 feature',
              'drift in %2 of %1 features',
              w.features.length,
              w.drifting.length
            )}
          </b>
        ) : (
          <span>{trans.__('no drift')}</span>
        )}
      </div>
      {!w.skipped && w.drifting.length > 0 && (
        <table className="nbs-drift-table">
          <thead>
            <tr>
              <th>{trans.__('feature')}</th>
              <th>KS</th>
              <th>p</th>
              <th>PSI</th>
              <th>{trans.__('share')}</th>
            </tr>
          </thead>
          <tbody>
            {shown.map(f => (
              <tr
                key={f.feature}
                className={f.drifting ? 'nbs-drifting' : undefined}
                data-feature={f.feature}
              >
                <td>{f.feature}</td>
                <td>{fmt(f.ks)}</td>
                <td>{fmtP(f.p_value)}</td>
                <td>{fmt(f.psi)}</td>
                <td>
                  {num(f.share) === null
                    ? '–'
                    : `${((f.share as number) * 100).toFixed(1)}%`}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

/** Drift of one endpoint's captured inputs, newest window first. */
export function DriftView(props: {
  ctx: IPanelContext;
  name: string;
}): JSX.Element {
  const { ctx, name } = props;
  const { trans } = ctx;
  const [windowLen, setWindowLen] = React.useState('1h');
  const [drift, setDrift] = React.useState<EndpointDrift | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  // drift reads the whole capture: look every DRIFT_EVERY refreshes, and at once on a change
  const ticks = React.useRef(0);
  React.useEffect(() => {
    ticks.current = 0;
  }, [name, windowLen]);

  usePoll(ctx, async () => {
    if (ticks.current++ % DRIFT_EVERY !== 0) {
      return;
    }
    try {
      setDrift(await getEndpointDrift(name, { window: windowLen }));
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [name, windowLen]);

  return (
    <div className="nbs-drift" data-drift={name}>
      <div className="nbs-drift-title">
        <b>{trans.__('Drift')}</b>{' '}
        <select
          aria-label={trans.__('Drift window')}
          value={windowLen}
          onChange={e => setWindowLen(e.target.value)}
        >
          {WINDOWS.map(w => (
            <option key={w} value={w}>
              {w}
            </option>
          ))}
        </select>
        {drift && (
          <span className="nbs-muted">
            {' '}
            {trans._n(
              '%1 captured row',
              '%1 captured rows',
              drift.captured_rows
            )}
            {drift.drifting.length
              ? ` · ${trans.__('drifting')}: ${drift.drifting.slice(0, 5).join(', ')}`
              : ''}
          </span>
        )}
      </div>
      {error && <div className="nbs-muted">{error}</div>}
      {drift && drift.windows.length === 0 && (
        <div className="nbs-muted">{trans.__('Nothing captured yet.')}</div>
      )}
      {drift &&
        drift.windows.map(w => (
          <WindowRow key={String(w.start)} trans={trans} w={w} />
        ))}
    </div>
  );
}

/** What runs now (jobs and endpoints) and what it costs per hour. */
export function IdleList(props: { ctx: IPanelContext }): JSX.Element | null {
  const { ctx } = props;
  const { trans } = ctx;
  const [items, setItems] = React.useState<IdleItem[]>([]);
  const [total, setTotal] = React.useState(0);

  usePoll(ctx, async () => {
    try {
      const answer = await listIdle();
      setItems(answer.items);
      setTotal(answer.cost_per_hour);
    } catch {
      setItems([]); // the list is a summary; the sections below say what failed
    }
  }, []);

  if (items.length === 0) {
    return null;
  }
  return (
    <div className="nbs-idle" aria-label={trans.__('Running now')}>
      <div>
        <b>{trans.__('Running now')}</b>: {formatCost(total)}/h
      </div>
      <ul className="nbs-list">
        {items.map(t => (
          <li key={`${t.kind}:${t.name}`} data-idle={t.name}>
            {t.kind} <code>{t.name}</code> {t.status.toLowerCase()} ·{' '}
            {formatCost(t.cost_per_hour)}/h
            {t.idle ? ` · ${trans.__('idle')} ${t.idle}` : ''}
          </li>
        ))}
      </ul>
    </div>
  );
}
