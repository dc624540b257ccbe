/** How times, durations, money and statuses look in the panel. */
import { TranslationBundle } from '@jupyterlab/translation';

export function formatTime(epochSeconds: number | null | undefined): string {
  if (!epochSeconds) {
    return '–';
  }
  return new Date(epochSeconds * 1000).toLocaleString();
}

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) {
    return '–';
  }
  const s = Math.round(seconds);
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${s % 60}s`;
  }
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function formatCost(usd: number | null | undefined): string {
  if (usd === null || usd === undefined) {
    return '–';
  }
  return `$${usd.toFixed(usd < 10 ? 2 : 0)}`;
}

/** A CSS class per status so colour follows state; the text is always shown too. */
export function statusClass(status: string): string {
  return `nbs-status nbs-status-${status.toLowerCase()}`;
}

export function statusLabel(trans: TranslationBundle, status: string): string {
  const labels: Record<string, string> = {
    PENDING: trans.__('pending'),
    RUNNING: trans.__('running'),
    SUCCEEDED: trans.__('succeeded'),
    FAILED: trans.__('failed'),
    CANCELLED: trans.__('cancelled'),
    LOST: trans.__('lost')
  };
  return labels[status.toUpperCase()] ?? status.toLowerCase();
}

export const ACTIVE = ['PENDING', 'RUNNING'];

/** "1 node", "2 nodes": a count of nodes in its plural form. */
export function nodeCount(trans: TranslationBundle, nodes: number): string {
  return trans._n('%1 node', '%1 nodes', nodes);
}

/** "1 node × 1 GPU", "2 nodes × 0 GPUs": each count in its own plural form. */
export function nodesAndGpus(
  trans: TranslationBundle,
  nodes: number,
  gpus: number
): string {
  return trans.__(
    '%1 × %2',
    nodeCount(trans, nodes),
    trans._n('%1 GPU', '%1 GPUs', gpus)
  );
}
