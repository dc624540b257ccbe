/** The Endpoints section: status, URL, replicas, latency and throughput, drift, scale, undeploy. */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

import {
  deleteEndpoint,
  getEndpointMetrics,
  listEndpoints,
  scaleEndpoint
} from '../api/client';
import { DescribeEndpoint, EndpointMetrics } from '../api/models';
import { errorText, IPanelContext, usePoll } from '../context';
import { statusClass } from '../format';
import { ISeries, LineChart } from './Chart';
import { DriftView, IdleList, SageMakerFacts } from './MonitoringViews';
import { Pager, useCursorPages } from './Pager';

const PAGE = 25;

type Row = Record<string, unknown>;

const num = (v: unknown): number | null =>
  typeof v === 'number' && Number.isFinite(v) ? v : null;

function fmtMs(v: unknown): string {
  const n = num(v);
  return n === null ? '–' : `${n.toFixed(n < 10 ? 2 : 0)} ms`;
}

interface IReplicas {
  current: number | null;
  min: number | null;
  max: number | null;
}

/** The engine reports replicas as {current, min, max}. */
function replicaRange(ep: DescribeEndpoint): IReplicas {
  const r = (ep.replicas ?? {}) as Row;
  return { current: num(r.current), min: num(r.min), max: num(r.max) };
}

function replicas(trans: TranslationBundle, ep: DescribeEndpoint): string {
  const r = replicaRange(ep);
  const range = r.min !== null && r.max !== null ? ` (${r.min}–${r.max})` : '';
  const current =
    r.current === null
      ? trans.__('replicas –')
      : trans._n('%1 replica', '%1 replicas', r.current);
  return `${current}${range}`;
}

function seriesOf(rows: Row[], keys: string[]): ISeries[] {
  const t0 = num(rows[0]?.time) ?? 0;
  return keys
    .map(key => ({
      name: key.replace(/_ms$|_rps$/, ''),
      points: rows
        .filter(r => num(r[key]) !== null)
        .map(
          r =>
            [(num(r.time) ?? 0) - t0, num(r[key]) as number] as [number, number]
        )
    }))
    .filter(s => s.points.length > 0);
}

function EndpointDetail(props: {
  ctx: IPanelContext;
  endpoint: DescribeEndpoint;
  onChanged: () => void;
}): JSX.Element {
  const { ctx, endpoint } = props;
  const { trans } = ctx;
  const [metrics, setMetrics] = React.useState<EndpointMetrics | null>(null);
  const [error, setError] = React.useState<string | null>(null);

  usePoll(ctx, async () => {
    try {
      setMetrics(await getEndpointMetrics(endpoint.name));
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [endpoint.name]);

  const m = (metrics ?? {}) as Row;
  const rows = (Array.isArray(m.series) ? m.series : []) as Row[];
  const errorRate = num(m.error_rate);

  const scale = async () => {
    const min = window.prompt(
      trans.__('Minimum replicas'),
      String(replicaRange(endpoint).min ?? 1)
    );
    const max =
      min === null
        ? null
        : window.prompt(
            trans.__('Maximum replicas'),
            String(replicaRange(endpoint).max ?? min)
          );
    if (min === null || max === null) {
      return;
    }
    try {
      await scaleEndpoint(endpoint.name, {
        min_replicas: Number(min),
        max_replicas: Number(max)
      });
      props.onChanged();
    } catch (e) {
      void showErrorMessage(trans.__('Scale failed'), errorText(e));
    }
  };

  const undeploy = async () => {
    const answer = await showDialog({
      title: trans.__('Undeploy %1?', endpoint.name),
      body: trans.__(
        'The endpoint stops serving and its replicas are stopped.'
      ),
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: trans.__('Undeploy') })
      ]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await deleteEndpoint(endpoint.name);
      props.onChanged();
    } catch (e) {
      void showErrorMessage(trans.__('Undeploy failed'), errorText(e));
    }
  };

  return (
    <div className="nbs-endpoint-detail" data-endpoint={endpoint.name}>
      {error && <div className="nbs-error">{error}</div>}
      <dl className="nbs-facts">
        <dt>p50 / p95 / p99</dt>
        <dd>
          {fmtMs(m.p50_ms)} / {fmtMs(m.p95_ms)} / {fmtMs(m.p99_ms)}
        </dd>
        <dt>{trans.__('Throughput')}</dt>
        <dd>{num(m.throughput_rps) ?? '–'} req/s</dd>
        <dt>{trans.__('Error rate')}</dt>
        <dd>{errorRate === null ? '–' : `${(errorRate * 100).toFixed(1)}%`}</dd>
      </dl>
      <SageMakerFacts metrics={m} />
      <LineChart
        title={trans.__('Latency')}
        unit="ms"
        series={seriesOf(rows, ['p50_ms', 'p95_ms', 'p99_ms'])}
      />
      <LineChart
        title={trans.__('Throughput')}
        unit="req/s"
        series={seriesOf(rows, ['rps'])}
      />
      <DriftView ctx={ctx} name={endpoint.name} />
      <div className="nbs-actions">
        <button
          type="button"
          className="jp-mod-styled"
          onClick={() => void scale()}
        >
          {trans.__('Scale')}
        </button>
        <button
          type="button"
          className="jp-mod-styled jp-mod-warn"
          onClick={() => void undeploy()}
        >
          {trans.__('Undeploy')}
        </button>
      </div>
    </div>
  );
}

export function EndpointsSection(props: { ctx: IPanelContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const [endpoints, setEndpoints] = React.useState<DescribeEndpoint[]>([]);
  const [open, setOpen] = React.useState<string | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const pages = useCursorPages();

  const refresh = usePoll(ctx, async () => {
    try {
      const page = await listEndpoints({ limit: PAGE, after: pages.after });
      setEndpoints(page.endpoints);
      pages.setNext(page.next);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [pages.after]);

  return (
    <div className="nbs-section nbs-endpoints">
      <IdleList ctx={ctx} />
      {error && <div className="nbs-error">{error}</div>}
      {endpoints.length === 0 && !error && (
        <div className="nbs-muted nbs-empty">
          {trans.__('No endpoints. Deploy one with %deploy in a notebook.')}
        </div>
      )}
      <ul className="nbs-list" aria-label={trans.__('Endpoints')}>
        {endpoints.map(ep => (
          <li key={ep.name} data-endpoint={ep.name}>
            <button
              type="button"
              className="nbs-link"
              aria-expanded={open === ep.name}
              onClick={() => setOpen(open === ep.name ? null : ep.name)}
            >
              {ep.name}
            </button>{' '}
            <span className={statusClass(ep.status)}>
              {ep.status.toLowerCase()}
            </span>{' '}
            <span className="nbs-muted nbs-replicas">
              {replicas(trans, ep)}
            </span>
            {ep.error && (
              <div className="nbs-error nbs-endpoint-error">{ep.error}</div>
            )}
            {ep.url && (
              <div className="nbs-url">
                <code>{ep.url}</code>
              </div>
            )}
            {open === ep.name && (
              <EndpointDetail ctx={ctx} endpoint={ep} onChanged={refresh} />
            )}
          </li>
        ))}
      </ul>
      <Pager
        pages={pages}
        trans={trans}
        backLabel={trans.__('Previous')}
        forwardLabel={trans.__('Next')}
      />
    </div>
  );
}
