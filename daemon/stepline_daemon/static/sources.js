// Chart sources. A source is one run timeline read with one history request: one
// line per metric. Every view builds its sources with chartSource, so they all
// have the same fields.

import { h } from "./dom.js";
import { link } from "./links.js";

export const PALETTE = [
  "#2f6fdf",
  "#e0533d",
  "#2a9d5c",
  "#e38a1c",
  "#7d54b2",
  "#169cac",
  "#c2457f",
  "#8a6d3b",
  "#5b6b7f",
  "#a3b41f",
];
export const ARCHIVED_DASH = [6, 4];
export const faded = (color) => `${color}a6`; // archived timelines: the run's colour, dashed and lighter

// `runNo` null reads the run's current timeline. `marker` is a step (a fork or
// rewind point): the source's first point is marked and a vertical rule drawn
// there, labelled `markerLabel`. `knownLastStep` is the run's last step when the
// page loaded: a live stream starts after it if the history read found nothing
// (null: from the start).
export function chartSource({
  id,
  runNo = null,
  label = id,
  color,
  dash = null,
  minStep = 0,
  marker = null,
  markerLabel = "fork",
  live = false,
  knownLastStep = null,
}) {
  return {
    id,
    runNo,
    label,
    color,
    dash,
    minStep,
    marker,
    markerLabel,
    live,
    knownLastStep,
    // Filled by ChartGrid: what was read ({steps, cols}), the last step read or
    // streamed, and live rows that came while a read was under way.
    data: null,
    lastStep: null,
    loading: false,
    pending: [],
  };
}

export function legendItem(source, project) {
  return h(
    "li",
    null,
    h("span", { class: `swatch${source.dash ? " dashed" : ""}`, style: `--c: ${source.color}` }),
    h("a", { href: link.run(project, source.id, source.runNo ?? null) }, source.label),
    source.marker !== null && source.marker !== undefined
      ? h("span", { class: "muted" }, ` from step ${source.marker}`)
      : null,
  );
}
