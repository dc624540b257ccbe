/**
 * Bodies of /nbscale/api/, mirroring server_ext/models.py (published as
 * server_ext/openapi.json; tests/unit/test_server_ext_models.py keeps them in step).
 */

export type JobStatus =
  'PENDING' | 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'CANCELLED' | 'LOST';

export interface ErrorResponse {
  error: string;
  message: string;
  field?: string | null;
}

export interface VersionResponse {
  version: string;
  api_version: number;
}

export interface BackendInfo {
  name: string;
  type: string;
  default: boolean;
  reachable: boolean;
  detail: string;
  price_per_node_hour: number;
}

export interface ListBackendsResponse {
  backends: BackendInfo[];
}

export interface CostEstimateQuery {
  backend?: string | null;
  nodes?: number;
  procs_per_node?: number;
  gpus_per_proc?: number;
  instance_type?: string | null;
  hours?: number;
}

export interface CostEstimate {
  backend: string;
  price_per_node_hour: number;
  nodes: number;
  hours: number;
  total: number;
  currency: string;
}

export interface ListJobsQuery {
  status?: JobStatus | null;
  backend?: string | null;
  limit?: number;
  /** The `next` cursor of the page before; left out: the first page. */
  after?: string | null;
}

export interface DescribeJob {
  id: string;
  name: string;
  backend: string;
  backend_type: string;
  status: JobStatus;
  created: number;
  started: number | null;
  ended: number | null;
  duration: number | null;
  nodes: number;
  procs_per_node: number;
  gpus_per_proc: number;
  cost: number | null;
  error: string | null;
  exit_code?: number | null;
  failed_rank?: number | null;
  restarts?: number;
  notebook?: string | null;
  spec?: Record<string, unknown> | null;
  /** The sweep this job is a trial of, and its trial number there. */
  sweep?: string | null;
  trial?: number | null;
}

export interface ListJobsResponse {
  jobs: DescribeJob[];
  /** Jobs that match the filters, in all pages. */
  total: number;
  limit: number;
  /** The cursor of the page after this one (send it as `after`); null on the last page. */
  next: string | null;
}

export interface CreateJob {
  path: string;
  name?: string | null;
  backend?: string | null;
  nodes?: number;
  procs_per_node?: number;
  gpus_per_proc?: number;
  instance_type?: string | null;
  parameters?: Record<string, unknown>;
}

export interface JobLogsQuery {
  rank?: number;
  offset?: number;
}

export interface JobLogs {
  rank: number;
  text: string;
  offset: number;
  next_offset: number;
  ranks: number[];
  status: JobStatus;
}

export interface MetricPoint {
  name: string;
  value: number | string;
  step?: number | null;
  rank?: number | null;
  time?: number | null;
}

export interface JobMetrics {
  metrics: MetricPoint[];
}

export interface DescribeEndpoint {
  name: string;
  status: string;
  url?: string | null;
  /** Why it failed, or which alarm made the platform roll its new version back. */
  error?: string | null;
  [extra: string]: unknown;
}

export interface ListEndpointsQuery {
  limit?: number;
  after?: string | null;
}

export interface ListEndpointsResponse {
  endpoints: DescribeEndpoint[];
  next: string | null;
}

export interface ScaleEndpoint {
  min_replicas: number;
  max_replicas: number;
}

export type EndpointMetrics = Record<string, unknown>;

export interface ListRunsQuery {
  limit?: number;
  after?: string | null;
}

export interface PipelineStep {
  name: string;
  status: string;
  cached?: boolean;
  /** "hit: ..." when taken from the cache, "miss: ..." when it ran again. */
  cache_reason?: string | null;
  depends_on?: string[];
  notebook?: string | null;
  error?: string | null;
  attempts?: number | null;
  [extra: string]: unknown;
}

export interface DescribeRun {
  id: string;
  status: string;
  steps?: PipelineStep[];
  [extra: string]: unknown;
}

export interface ListRunsResponse {
  runs: DescribeRun[];
  next: string | null;
}

export interface CreateRun {
  path: string;
  backend?: string;
  parameters?: Record<string, unknown>;
}

export interface EndpointDriftQuery {
  window?: string;
  since?: string | null;
}

/** One feature of one window: the KS statistic, PSI and the share of the window that moved. */
export interface DriftFeature {
  feature: string;
  drifting: boolean;
  ks: number;
  p_value: number;
  psi: number;
  psi_threshold: number | null;
  share: number;
  [extra: string]: unknown;
}

/** A window of captured inputs; features come drifting first, strongest first. */
export interface DriftWindow {
  start: number;
  end: number;
  rows: number;
  skipped?: string | null;
  drifting: string[];
  features: DriftFeature[];
  [extra: string]: unknown;
}

export interface EndpointDrift {
  endpoint: string;
  window_s: number;
  captured_rows: number;
  drifting: string[];
  alerts: number;
  /** Newest first. */
  windows: DriftWindow[];
  [extra: string]: unknown;
}

export interface IdleItem {
  kind: string;
  name: string;
  backend: string;
  status: string;
  units: number;
  cost_per_hour: number;
  since?: number | null;
  idle?: string | null;
  [extra: string]: unknown;
}

export interface ListIdleResponse {
  items: IdleItem[];
  cost_per_hour: number;
}

export interface ListSweepsQuery {
  limit?: number;
}

/** A trial of a sweep; `value` is its final objective, `last` the latest while it runs. */
export interface SweepTrial {
  number: number;
  params: Record<string, unknown>;
  /** PENDING, RUNNING, SUCCEEDED, FAILED, PRUNED or CANCELLED. */
  status: string;
  value?: number | null;
  last?: number | null;
  steps?: number;
  job_id?: string | null;
  started?: number | null;
  ended?: number | null;
  duration?: number | null;
  error?: string | null;
  cost?: number | null;
  [extra: string]: unknown;
}

export interface SweepSummary {
  id: string;
  name: string;
  backend: string;
  backend_type: string;
  /** RUNNING, SUCCEEDED, FAILED, CANCELLED or STOPPED. */
  status: string;
  /** The metric and its direction, e.g. "val_loss:min". */
  objective: string;
  planned: number;
  done: number;
  running: number;
  best_value: number | null;
  best_trial: number | null;
  cost: number | null;
  created: number;
  ended: number | null;
  error: string | null;
}

export interface ListSweepsResponse {
  sweeps: SweepSummary[];
}

export interface DescribeSweep {
  id: string;
  name: string;
  backend: string;
  status: string;
  objective: string;
  planned: number;
  native_id?: string | null;
  error?: string | null;
  notes?: string[];
  /** Trials per status. */
  counts?: Record<string, number>;
  /** USD spent by its trials, where they are priced. */
  cost?: number | null;
  best?: SweepTrial | null;
  /** By the objective, best first; unscored last. */
  trials?: SweepTrial[];
  [extra: string]: unknown;
}
