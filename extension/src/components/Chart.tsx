/** A small SVG line chart: enough for loss curves and latency series, no chart library. */
import * as React from 'react';

export interface ISeries {
  name: string;
  points: Array<[number, number]>;
}

const COLOURS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd'];

export function LineChart(props: {
  title: string;
  series: ISeries[];
  unit?: string;
  width?: number;
  height?: number;
}): JSX.Element {
  const width = props.width ?? 300;
  const height = props.height ?? 120;
  const pad = { left: 44, right: 8, top: 8, bottom: 18 };
  const all = props.series.flatMap(s => s.points);
  if (all.length === 0) {
    return (
      <div className="nbs-chart nbs-chart-empty" aria-label={props.title}>
        <div className="nbs-chart-title">{props.title}</div>
        <div className="nbs-muted">–</div>
      </div>
    );
  }
  const xs = all.map(p => p[0]);
  const ys = all.map(p => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
  const sx = (x: number) =>
    pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const sy = (y: number) =>
    height -
    pad.bottom -
    ((y - y0) / (y1 - y0 || 1)) * (height - pad.top - pad.bottom);
  const fmt = (v: number) =>
    Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3);
  return (
    <figure className="nbs-chart" aria-label={props.title}>
      <figcaption className="nbs-chart-title">
        {props.title}
        {props.unit ? ` (${props.unit})` : ''}
      </figcaption>
      <svg width={width} height={height} role="img">
        <line
          x1={pad.left}
          y1={height - pad.bottom}
          x2={width - pad.right}
          y2={height - pad.bottom}
          className="nbs-axis"
        />
        <line
          x1={pad.left}
          y1={pad.top}
          x2={pad.left}
          y2={height - pad.bottom}
          className="nbs-axis"
        />
        <text x={pad.left - 4} y={pad.top + 8} textAnchor="end">
          {fmt(y1)}
        </text>
        <text x={pad.left - 4} y={height - pad.bottom} textAnchor="end">
          {fmt(y0)}
        </text>
        {props.series.map((s, i) => (
          <polyline
            key={s.name}
            fill="none"
            stroke={COLOURS[i % COLOURS.length]}
            strokeWidth={1.5}
            points={s.points.map(p => `${sx(p[0])},${sy(p[1])}`).join(' ')}
          />
        ))}
      </svg>
      <div className="nbs-legend">
        {props.series.map((s, i) => (
          <span key={s.name} style={{ color: COLOURS[i % COLOURS.length] }}>
            ● {s.name}
          </span>
        ))}
      </div>
    </figure>
  );
}
