/** The Jobs section: newest first, filter by status, page through by cursor (Pager.tsx). */
import * as React from 'react';

import { listJobs } from '../api/client';
import { DescribeJob, JobStatus } from '../api/models';
import { errorText, IPanelContext, usePoll } from '../context';
import {
  formatCost,
  formatDuration,
  formatTime,
  nodesAndGpus,
  statusClass,
  statusLabel
} from '../format';
import { Pager, useCursorPages } from './Pager';

const PAGE = 25;
const STATUSES: JobStatus[] = [
  'PENDING',
  'RUNNING',
  'SUCCEEDED',
  'FAILED',
  'CANCELLED',
  'LOST'
];

type ListItem =
  | { kind: 'job'; job: DescribeJob }
  | { kind: 'sweep'; sweep: string; jobs: DescribeJob[] };

/** The page's jobs in order, a sweep's trials gathered where its newest trial is. */
export function groupBySweep(jobs: DescribeJob[]): ListItem[] {
  const out: ListItem[] = [];
  const groups = new Map<string, DescribeJob[]>();
  for (const job of jobs) {
    if (!job.sweep) {
      out.push({ kind: 'job', job });
      continue;
    }
    const group = groups.get(job.sweep);
    if (group) {
      group.push(job);
    } else {
      const fresh = [job];
      groups.set(job.sweep, fresh);
      out.push({ kind: 'sweep', sweep: job.sweep, jobs: fresh });
    }
  }
  return out;
}

function JobRow(props: { ctx: IPanelContext; job: DescribeJob }): JSX.Element {
  const { ctx, job } = props;
  const { trans } = ctx;
  return (
    <li
      className="nbs-row"
      data-job-id={job.id}
      title={job.id}
      onClick={e => {
        e.stopPropagation();
        ctx.openJob(job.id);
      }}
    >
      <div className="nbs-row-main">
        <button className="nbs-link" type="button">
          {job.name}
        </button>
        <span className={statusClass(job.status)}>
          {statusLabel(trans, job.status)}
        </span>
        <span className="nbs-cost" title={trans.__('Cost')}>
          {formatCost(job.cost)}
        </span>
      </div>
      <div className="nbs-row-sub nbs-muted">
        <span title={trans.__('Backend')}>{job.backend}</span>
        <span className="nbs-size" title={trans.__('Nodes × GPUs per node')}>
          {nodesAndGpus(
            trans,
            job.nodes,
            job.procs_per_node * job.gpus_per_proc
          )}
        </span>
        <span title={trans.__('Started')}>{formatTime(job.started)}</span>
        <span title={trans.__('Duration')}>{formatDuration(job.duration)}</span>
      </div>
    </li>
  );
}

/** A sweep's trial jobs under one row; folded until opened. */
function SweepGroup(props: {
  ctx: IPanelContext;
  sweep: string;
  jobs: DescribeJob[];
}): JSX.Element {
  const { ctx, sweep, jobs } = props;
  const { trans } = ctx;
  const [open, setOpen] = React.useState(false);
  const counts = new Map<string, number>();
  for (const job of jobs) {
    counts.set(job.status, (counts.get(job.status) ?? 0) + 1);
  }
  const cost = jobs.reduce<number | null>(
    (sum, j) => (j.cost === null ? sum : (sum ?? 0) + j.cost),
    null
  );
  const trials = [...jobs].sort((a, b) => (a.trial ?? 0) - (b.trial ?? 0));
  // a trial job is named "<sweep name>-t<number>"; the id adds the sweep's key
  const name = jobs[0].name.replace(/-t\d+$/, '') || sweep;
  return (
    <li className="nbs-sweep-group" data-sweep-id={sweep} title={sweep}>
      <div className="nbs-row-main">
        <button
          type="button"
          className="nbs-link nbs-sweep-toggle"
          aria-expanded={open}
          onClick={() => setOpen(!open)}
        >
          {open ? '▾' : '▸'} {trans.__('sweep %1', name)}
        </button>
        <span className="nbs-cost" title={trans.__('Cost')}>
          {formatCost(cost)}
        </span>
      </div>
      <div className="nbs-row-sub nbs-muted">
        <span>{trans._n('%1 trial', '%1 trials', jobs.length)}</span>
        {[...counts.entries()].map(([status, n]) => (
          <span key={status} className={statusClass(status)}>
            {trans.__('%1 %2', n, statusLabel(trans, status))}
          </span>
        ))}
      </div>
      {open && (
        <ul
          className="nbs-list nbs-sweep-trials"
          aria-label={trans.__('Trials of %1', sweep)}
        >
          {trials.map(job => (
            <JobRow key={job.id} ctx={ctx} job={job} />
          ))}
        </ul>
      )}
    </li>
  );
}

export function JobsSection(props: { ctx: IPanelContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const [jobs, setJobs] = React.useState<DescribeJob[]>([]);
  const [total, setTotal] = React.useState(0);
  const pages = useCursorPages();
  const [status, setStatus] = React.useState<JobStatus | ''>('');
  const [error, setError] = React.useState<string | null>(null);

  usePoll(ctx, async () => {
    try {
      const page = await listJobs({
        status: status || null,
        limit: PAGE,
        after: pages.after
      });
      setJobs(page.jobs);
      setTotal(page.total);
      pages.setNext(page.next);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }, [pages.after, status]);

  return (
    <div className="nbs-section nbs-jobs">
      <div className="nbs-toolbar">
        <label>
          {trans.__('Status')}{' '}
          <select
            aria-label={trans.__('Filter jobs by status')}
            value={status}
            onChange={e => {
              setStatus(e.target.value as JobStatus | '');
              pages.reset();
            }}
          >
            <option value="">{trans.__('all')}</option>
            {STATUSES.map(s => (
              <option key={s} value={s}>
                {statusLabel(trans, s)}
              </option>
            ))}
          </select>
        </label>
        <span className="nbs-muted">
          {trans._n('%1 job', '%1 jobs', total)}
        </span>
      </div>
      {error && <div className="nbs-error">{error}</div>}
      {jobs.length === 0 && !error ? (
        <div className="nbs-muted nbs-empty">
          {trans.__(
            'No jobs yet. Use "Run as job" in a notebook toolbar or %%train in a cell.'
          )}
        </div>
      ) : (
        <ul className="nbs-list" aria-label={trans.__('Jobs')}>
          {groupBySweep(jobs).map(item =>
            item.kind === 'job' ? (
              <JobRow key={item.job.id} ctx={ctx} job={item.job} />
            ) : (
              <SweepGroup
                key={`sweep-${item.sweep}`}
                ctx={ctx}
                sweep={item.sweep}
                jobs={item.jobs}
              />
            )
          )}
        </ul>
      )}
      <Pager
        pages={pages}
        trans={trans}
        backLabel={trans.__('Newer')}
        forwardLabel={trans.__('Older')}
        position={`${pages.index * PAGE + 1}–${
          pages.index * PAGE + jobs.length
        } / ${total}`}
      />
    </div>
  );
}
