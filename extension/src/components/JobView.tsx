/** One job: live log tail per rank, metrics chart, spec, cancel, re-run, %attach. */
import { showErrorMessage } from '@jupyterlab/apputils';
import * as React from 'react';

import {
  cancelJob,
  getJob,
  getJobLogs,
  getJobMetrics,
  rerunJob
} from '../api/client';
import { DescribeJob, MetricPoint } from '../api/models';
import { errorText, IPanelContext, usePoll } from '../context';
import {
  ACTIVE,
  formatCost,
  formatDuration,
  formatTime,
  nodeCount,
  statusClass,
  statusLabel
} from '../format';
import { ISeries, LineChart } from './Chart';

// keep the tail readable and the DOM small for chatty jobs
const MAX_LOG_CHARS = 200_000;

function metricSeries(points: MetricPoint[]): ISeries[] {
  const byName = new Map<string, Array<[number, number]>>();
  for (const p of points) {
    if (typeof p.value !== 'number' || (p.rank ?? 0) !== 0) {
      continue;
    }
    const series = byName.get(p.name) ?? [];
    series.push([p.step ?? series.length, p.value]);
    byName.set(p.name, series);
  }
  return [...byName.entries()].map(([name, pts]) => ({ name, points: pts }));
}

export function JobView(props: {
  ctx: IPanelContext;
  jobId: string;
  onTitle: (title: string) => void;
}): JSX.Element {
  const { ctx, jobId } = props;
  const { trans } = ctx;
  const [job, setJob] = React.useState<DescribeJob | null>(null);
  const [rank, setRank] = React.useState(0);
  const [ranks, setRanks] = React.useState<number[]>([0]);
  const [log, setLog] = React.useState('');
  const [metrics, setMetrics] = React.useState<MetricPoint[]>([]);
  const [error, setError] = React.useState<string | null>(null);
  const offset = React.useRef(0);
  const logDone = React.useRef(false);
  const pre = React.useRef<HTMLPreElement>(null);

  React.useEffect(() => {
    offset.current = 0;
    logDone.current = false;
    setLog('');
  }, [rank]);

  const refresh = usePoll(ctx, async () => {
    try {
      if (logDone.current && job && !ACTIVE.includes(job.status)) {
        return; // ended and fully read: nothing more will come
      }
      const described = await getJob(jobId);
      setJob(described);
      props.onTitle(described.name);
      // read the log until it stops growing, then stop if the job has ended
      let text = '';
      for (;;) {
        const chunk = await getJobLogs(jobId, {
          rank,
          offset: offset.current
        });
        setRanks(chunk.ranks.length ? chunk.ranks : [0]);
        if (!chunk.text) {
          break;
        }
        text += chunk.text;
        offset.current = chunk.next_offset;
      }
      if (text) {
        setLog(prev => (prev + text).slice(-MAX_LOG_CHARS));
      }
      logDone.current = !ACTIVE.includes(described.status);
      setMetrics((await getJobMetrics(jobId)).metrics);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [jobId, rank, job?.status]);

  React.useEffect(() => {
    if (pre.current) {
      pre.current.scrollTop = pre.current.scrollHeight;
    }
  }, [log]);

  const act = async (what: () => Promise<DescribeJob>, opensNew: boolean) => {
    try {
      const result = await what();
      if (opensNew) {
        ctx.openJob(result.id);
      } else {
        setJob(result);
        logDone.current = false;
        refresh();
      }
    } catch (e) {
      void showErrorMessage(trans.__('nbscale'), errorText(e));
    }
  };

  if (!job) {
    return (
      <div className="nbs-job-view">
        {error ? (
          <div className="nbs-error">{error}</div>
        ) : (
          trans.__('Loading…')
        )}
      </div>
    );
  }
  const active = ACTIVE.includes(job.status);
  return (
    <div className="nbs-job-view" data-job-id={job.id}>
      <header className="nbs-job-header">
        <h2>{job.name}</h2>
        <span
          className={statusClass(job.status)}
          aria-label={trans.__('Job status')}
        >
          {statusLabel(trans, job.status)}
        </span>
        <span className="nbs-muted">{job.id}</span>
        <div className="nbs-actions">
          {active && (
            <button
              type="button"
              className="jp-mod-styled jp-mod-warn"
              onClick={() => void act(() => cancelJob(job.id), false)}
            >
              {trans.__('Cancel job')}
            </button>
          )}
          <button
            type="button"
            className="jp-mod-styled"
            onClick={() => void act(() => rerunJob(job.id), true)}
          >
            {trans.__('Re-run')}
          </button>
          <button
            type="button"
            className="jp-mod-styled"
            onClick={() => {
              if (!ctx.insertAttach(job.id)) {
                void showErrorMessage(
                  trans.__('nbscale'),
                  trans.__(
                    'Open a notebook first: %attach goes into its active cell.'
                  )
                );
              }
            }}
          >
            {trans.__('Insert %attach')}
          </button>
        </div>
      </header>
      {error && <div className="nbs-error">{error}</div>}
      {job.error && <div className="nbs-error">{job.error}</div>}
      <dl className="nbs-facts">
        <dt>{trans.__('Backend')}</dt>
        <dd>{job.backend}</dd>
        <dt>{trans.__('Size')}</dt>
        <dd className="nbs-size">
          {trans.__(
            '%1 × %2 × %3',
            nodeCount(trans, job.nodes),
            trans._n(
              '%1 process per node',
              '%1 processes per node',
              job.procs_per_node
            ),
            trans._n(
              '%1 GPU per process',
              '%1 GPUs per process',
              job.gpus_per_proc
            )
          )}
        </dd>
        <dt>{trans.__('Restarts')}</dt>
        <dd className="nbs-restarts" data-restarts={job.restarts ?? 0}>
          {/* the allowance picks the plural form (English needs none here) */}
          {trans._n(
            '%2 of %1 allowed',
            '%2 of %1 allowed',
            Number(job.spec?.max_restarts ?? 0),
            job.restarts ?? 0
          )}
        </dd>
        <dt>{trans.__('Started')}</dt>
        <dd>{formatTime(job.started)}</dd>
        <dt>{trans.__('Duration')}</dt>
        <dd>{formatDuration(job.duration)}</dd>
        <dt>{trans.__('Cost')}</dt>
        <dd>{formatCost(job.cost)}</dd>
      </dl>
      <section className="nbs-logs">
        <div className="nbs-toolbar">
          <h3>{trans.__('Logs')}</h3>
          <label>
            {trans.__('Rank')}{' '}
            <select
              aria-label={trans.__('Rank')}
              value={rank}
              onChange={e => setRank(Number(e.target.value))}
            >
              {ranks.map(r => (
                <option key={r} value={r}>
                  {r}
                </option>
              ))}
            </select>
          </label>
        </div>
        <pre ref={pre} className="nbs-log" aria-label={trans.__('Log output')}>
          {log || (active ? trans.__('waiting for output…') : '')}
        </pre>
      </section>
      <section className="nbs-metrics">
        <h3>{trans.__('Metrics')}</h3>
        <LineChart
          title={trans.__('Metrics of rank 0 by step')}
          series={metricSeries(metrics)}
          width={480}
          height={160}
        />
      </section>
      <details className="nbs-spec">
        <summary>{trans.__('Spec')}</summary>
        <pre>{JSON.stringify(job.spec, null, 2)}</pre>
      </details>
    </div>
  );
}
