// uPlot options for one metric's chart over a grid's sources.

import { firstDefined } from "./chart-data.js";
import { fmtNum } from "./format.js";
import { prefs } from "./prefs.js";

const hasMarker = (s) => s.marker !== null && s.marker !== undefined;

// A faint vertical rule at each fork or rewind step, labelled.
function drawMarkers(markers) {
  return (u) => {
    const { ctx } = u;
    const { top, height, left, width: w } = u.bbox;
    ctx.save();
    ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
    ctx.fillStyle = "#6b7280";
    ctx.strokeStyle = "rgba(55, 65, 81, 0.35)";
    ctx.lineWidth = devicePixelRatio;
    ctx.setLineDash([3 * devicePixelRatio, 3 * devicePixelRatio]);
    for (const s of markers) {
      const x = u.valToPos(s.marker, "x", true);
      if (!(x >= left && x <= left + w)) continue;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillText(`${s.markerLabel ?? "fork"} @ ${s.marker}`, x + 4 * devicePixelRatio, top - 6 * devicePixelRatio);
    }
    ctx.restore();
  };
}

function sourceSeries(s) {
  return {
    label: s.label,
    stroke: s.color,
    width: 1.6,
    dash: s.dash ?? undefined,
    spanGaps: false,
    value: (u, v) => fmtNum(v),
    points: {
      show: false,
      size: 9,
      width: 2,
      stroke: "#ffffff",
      fill: s.color,
      // The fork (or rewind) point: the first point of a source that branches off.
      filter: (u, si) => {
        if (!hasMarker(s)) return null;
        const i = firstDefined(u.data[si]);
        return i === null ? null : [i];
      },
    },
  };
}

// `syncKey`: charts sharing it move their cursors together.
export function chartOptions(sources, width, syncKey) {
  return {
    width,
    height: 220,
    padding: [20, 12, 0, 0], // room above the plot for the fork labels
    pxAlign: 0, // no pixel snapping: slow curves stay smooth instead of stair-stepped
    scales: { x: { time: false }, y: { distr: prefs.log ? 3 : 1 } },
    cursor: { sync: { key: syncKey }, drag: { x: true, y: false } },
    focus: { alpha: 0.35 },
    legend: { live: true },
    axes: [
      { stroke: "#5b6472", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#dfe3e8" } },
      {
        stroke: "#5b6472",
        grid: { stroke: "#eef0f3" },
        ticks: { stroke: "#dfe3e8" },
        size: 56,
        values: (u, splits) => splits.map((v) => (v === null ? null : fmtNum(v))), // null: a tick left unlabelled
      },
    ],
    series: [{ label: "step", value: (u, v) => fmtNum(v) }, ...sources.map(sourceSeries)],
    hooks: { draw: [drawMarkers(sources.filter(hasMarker))] },
  };
}
