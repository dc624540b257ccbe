/**
 * One typed function per route of /nbscale/api/, all through one request
 * helper over ServerConnection; widgets never call fetch themselves.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import * as M from './models';

/** The API version this panel speaks; the server says its own in GET version. */
export const API_VERSION = 1;

/** An answer other than 2xx, with the server's message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly kind: string,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

type Query = Record<string, string | number | boolean | null | undefined>;

function queryString(query?: Query | object): string {
  if (!query) {
    return '';
  }
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') {
      params.set(key, String(value));
    }
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

export async function request<T>(
  path: string,
  init: RequestInit = {},
  query?: Query | object,
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url =
    URLExt.join(settings.baseUrl, 'nbscale', 'api', path) + queryString(query);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, 'network', String(error));
  }
  const text = await response.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: 'bad_response', message: text.slice(0, 200) };
    }
  }
  if (!response.ok) {
    const body = (data ?? {}) as Partial<M.ErrorResponse>;
    throw new ApiError(
      response.status,
      body.error ?? 'http_error',
      body.message ?? response.statusText
    );
  }
  return data as T;
}

const enc = encodeURIComponent;
const json = (method: string, body?: unknown): RequestInit => ({
  method,
  body: body === undefined ? undefined : JSON.stringify(body)
});

export const getVersion = () => request<M.VersionResponse>('version');
export const listBackends = () => request<M.ListBackendsResponse>('backends');
export const estimateCost = (q: M.CostEstimateQuery) =>
  request<M.CostEstimate>('cost', {}, q);

export const listJobs = (q: M.ListJobsQuery = {}) =>
  request<M.ListJobsResponse>('jobs', {}, q);
export const getJob = (id: string) => request<M.DescribeJob>(`jobs/${enc(id)}`);
export const submitJob = (body: M.CreateJob) =>
  request<M.DescribeJob>('jobs', json('POST', body));
export const cancelJob = (id: string) =>
  request<M.DescribeJob>(`jobs/${enc(id)}`, json('DELETE'));
export const rerunJob = (id: string) =>
  request<M.DescribeJob>(`jobs/${enc(id)}/rerun`, json('POST', {}));
export const getJobLogs = (id: string, q: M.JobLogsQuery) =>
  request<M.JobLogs>(`jobs/${enc(id)}/logs`, {}, q);
export const getJobMetrics = (id: string) =>
  request<M.JobMetrics>(`jobs/${enc(id)}/metrics`);

export const listEndpoints = (q: M.ListEndpointsQuery = {}) =>
  request<M.ListEndpointsResponse>('endpoints', {}, q);
export const getEndpoint = (name: string) =>
  request<M.DescribeEndpoint>(`endpoints/${enc(name)}`);
export const getEndpointMetrics = (name: string) =>
  request<M.EndpointMetrics>(`endpoints/${enc(name)}/metrics`);
export const scaleEndpoint = (name: string, body: M.ScaleEndpoint) =>
  request<M.DescribeEndpoint>(
    `endpoints/${enc(name)}/scale`,
    json('POST', body)
  );
export const deleteEndpoint = (name: string) =>
  request<M.DescribeEndpoint>(`endpoints/${enc(name)}`, json('DELETE'));

export const getEndpointDrift = (name: string, q: M.EndpointDriftQuery = {}) =>
  request<M.EndpointDrift>(`endpoints/${enc(name)}/drift`, {}, q);
export const listIdle = () => request<M.ListIdleResponse>('idle');

export const listRuns = (q: M.ListRunsQuery = {}) =>
  request<M.ListRunsResponse>('pipelines', {}, q);
export const getRun = (id: string) =>
  request<M.DescribeRun>(`pipelines/${enc(id)}`);
export const startRun = (body: M.CreateRun) =>
  request<M.DescribeRun>('pipelines', json('POST', body));
export const cancelRun = (id: string) =>
  request<M.DescribeRun>(`pipelines/${enc(id)}`, json('DELETE'));

export const listSweeps = (q: M.ListSweepsQuery = {}) =>
  request<M.ListSweepsResponse>('sweeps', {}, q);
export const getSweep = (id: string) =>
  request<M.DescribeSweep>(`sweeps/${enc(id)}`);
export const cancelSweep = (id: string) =>
  request<M.DescribeSweep>(`sweeps/${enc(id)}`, json('DELETE'));

export type ServerCheck =
  | { kind: 'ok' }
  | { kind: 'missing' }
  | { kind: 'mismatch'; version: string; apiVersion: number }
  | { kind: 'error'; message: string };

/** Whether the server extension is there and speaks this panel's API version. */
export async function checkServer(): Promise<ServerCheck> {
  try {
    const v = await getVersion();
    if (v.api_version !== API_VERSION) {
      return {
        kind: 'mismatch',
        version: v.version,
        apiVersion: v.api_version
      };
    }
    return { kind: 'ok' };
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      return { kind: 'missing' };
    }
    return { kind: 'error', message: String(error) };
  }
}
