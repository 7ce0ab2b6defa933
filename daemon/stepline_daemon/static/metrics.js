// A metric is a numeric value under a key that is not one of the underscore keys.
export const isMetric = (key, value) => !key.startsWith("_") && typeof value === "number";

export function metricKeys(summaries) {
  const keys = new Set();
  for (const summary of summaries) {
    for (const [k, v] of Object.entries(summary ?? {})) if (isMetric(k, v)) keys.add(k);
  }
  return [...keys].sort();
}
