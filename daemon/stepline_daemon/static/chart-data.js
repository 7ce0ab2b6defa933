// A source's rows as one chart's line: smoothed and filtered as the preferences say.

import { prefs } from "./prefs.js";

// Exponential moving average with TensorBoard's debiasing (W&B's "exponential"
// smoothing): the first point is the raw value, gaps (null) stay gaps.
function ema(ys, weight) {
  let last = 0;
  let n = 0;
  return ys.map((y) => {
    if (y === null) return null;
    last = last * weight + (1 - weight) * y;
    n += 1;
    return last / (1 - weight ** n);
  });
}

export function sourceTable(source, metric) {
  const xs = [];
  const ys = [];
  const steps = source.data?.steps ?? [];
  const col = source.data?.cols[metric] ?? [];
  for (let i = 0; i < steps.length; i++) {
    const v = col[i];
    if (v === null || v === undefined) continue; // this row does not hold the metric
    xs.push(steps[i]);
    ys.push(typeof v === "number" && Number.isFinite(v) ? v : null); // NaN, ±Inf: a gap
  }
  let out = prefs.smoothing > 0 ? ema(ys, prefs.smoothing) : ys;
  if (prefs.log) out = out.map((v) => (v !== null && v > 0 ? v : null));
  return [xs, out];
}

export function firstDefined(values) {
  const i = values.findIndex((v) => v !== null && v !== undefined);
  return i < 0 ? null : i;
}
