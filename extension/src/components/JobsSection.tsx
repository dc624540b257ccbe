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
          {jobs.map(job => (
            <li
              key={job.id}
              className="nbs-row"
              data-job-id={job.id}
              title={job.id}
              onClick={() => ctx.openJob(job.id)}
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
                <span
                  className="nbs-size"
                  title={trans.__('Nodes × GPUs per node')}
                >
                  {nodesAndGpus(
                    trans,
                    job.nodes,
                    job.procs_per_node * job.gpus_per_proc
                  )}
                </span>
                <span title={trans.__('Started')}>
                  {formatTime(job.started)}
                </span>
                <span title={trans.__('Duration')}>
                  {formatDuration(job.duration)}
                </span>
              </div>
            </li>
          ))}
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
