/** The body of the "Run as job" / "Run as pipeline" dialog: backend, nodes, GPUs, parameters, cost. */
import { ReactWidget } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

import { estimateCost, listBackends } from '../api/client';
import { BackendInfo, CostEstimate } from '../api/models';
import { errorText } from '../context';
import { formatCost, nodeCount } from '../format';

export interface IRunRequest {
  backend: string | null;
  nodes: number;
  procs_per_node: number;
  gpus_per_proc: number;
  parameters: Record<string, unknown>;
}

interface IFormState {
  backend: string;
  nodes: number;
  procs: number;
  gpus: number;
  hours: number;
  parameters: string;
}

function parseParameters(
  trans: TranslationBundle,
  text: string
): Record<string, unknown> {
  if (!text.trim()) {
    return {};
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(
      trans.__('Parameters must be a JSON object, e.g. {"lr": 0.01}')
    );
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(
      trans.__('Parameters must be a JSON object, e.g. {"lr": 0.01}')
    );
  }
  return value as Record<string, unknown>;
}

function RunForm(props: {
  trans: TranslationBundle;
  mode: 'job' | 'pipeline';
  initial: IFormState;
  onChange: (state: IFormState) => void;
}): JSX.Element {
  const { trans, mode } = props;
  const [state, setState] = React.useState(props.initial);
  const [backends, setBackends] = React.useState<BackendInfo[]>([]);
  const [cost, setCost] = React.useState<CostEstimate | null>(null);
  const [costError, setCostError] = React.useState<string | null>(null);

  React.useEffect(() => {
    listBackends()
      .then(r => setBackends(r.backends))
      .catch(e => setCostError(errorText(e)));
  }, []);

  React.useEffect(() => {
    props.onChange(state);
    if (mode !== 'job') {
      return;
    }
    let current = true;
    estimateCost({
      backend: state.backend || null,
      nodes: state.nodes,
      procs_per_node: state.procs,
      gpus_per_proc: state.gpus,
      hours: state.hours
    })
      .then(c => current && (setCost(c), setCostError(null)))
      .catch(e => current && (setCost(null), setCostError(errorText(e))));
    return () => {
      current = false;
    };
  }, [state]);

  const set = (patch: Partial<IFormState>) => setState({ ...state, ...patch });
  const int = (v: string) => Math.max(0, Math.floor(Number(v) || 0));

  return (
    <form className="nbs-run-form" onSubmit={e => e.preventDefault()}>
      <label>
        {trans.__('Backend')}
        <select
          name="backend"
          value={state.backend}
          onChange={e => set({ backend: e.target.value })}
        >
          <option value="">{trans.__('default')}</option>
          {backends.map(b => (
            <option key={b.name} value={b.name} disabled={!b.reachable}>
              {b.name} ({b.type})
              {b.reachable ? '' : ` – ${trans.__('unreachable')}`}
            </option>
          ))}
        </select>
      </label>
      {mode === 'job' && (
        <>
          <label>
            {trans.__('Nodes')}
            <input
              name="nodes"
              type="number"
              min={1}
              value={state.nodes}
              onChange={e => set({ nodes: int(e.target.value) })}
            />
          </label>
          <label>
            {trans.__('Processes per node')}
            <input
              name="procs"
              type="number"
              min={1}
              value={state.procs}
              onChange={e => set({ procs: int(e.target.value) })}
            />
          </label>
          <label>
            {trans.__('GPUs per process')}
            <input
              name="gpus"
              type="number"
              min={0}
              value={state.gpus}
              onChange={e => set({ gpus: int(e.target.value) })}
            />
          </label>
          <label>
            {trans.__('Expected hours')}
            <input
              name="hours"
              type="number"
              min={0.1}
              step={0.1}
              value={state.hours}
              onChange={e => set({ hours: Number(e.target.value) || 0 })}
            />
          </label>
        </>
      )}
      <label>
        {trans.__('Parameters (JSON)')}
        <textarea
          name="parameters"
          rows={3}
          placeholder='{"lr": 0.01}'
          value={state.parameters}
          onChange={e => set({ parameters: e.target.value })}
        />
      </label>
      {mode === 'job' && (
        <div className="nbs-estimate" aria-live="polite">
          {cost
            ? trans.__(
                'Estimated cost: %1 (%2 × %3 h × %4 per node hour)',
                formatCost(cost.total),
                nodeCount(trans, cost.nodes),
                cost.hours,
                formatCost(cost.price_per_node_hour)
              )
            : costError && <span className="nbs-error">{costError}</span>}
        </div>
      )}
    </form>
  );
}

export class RunDialogBody extends ReactWidget {
  private _state: IFormState;

  constructor(
    private readonly _trans: TranslationBundle,
    private readonly _mode: 'job' | 'pipeline',
    defaultBackend: string
  ) {
    super();
    this._state = {
      backend: defaultBackend,
      nodes: 1,
      procs: 1,
      gpus: 0,
      hours: 1,
      parameters: ''
    };
    this.addClass('nbs-run-dialog');
  }

  render(): JSX.Element {
    return (
      <RunForm
        trans={this._trans}
        mode={this._mode}
        initial={this._state}
        onChange={s => (this._state = s)}
      />
    );
  }

  getValue(): IRunRequest {
    const s = this._state;
    return {
      backend: s.backend || null,
      nodes: s.nodes,
      procs_per_node: s.procs,
      gpus_per_proc: s.gpus,
      parameters: parseParameters(this._trans, s.parameters)
    };
  }
}
