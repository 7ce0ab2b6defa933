// A grid of uPlot charts, one per metric, over a view's sources: reads their
// history, takes their live rows and keeps the charts up to date.

import { getJSON, runPath } from "./api.js";
import { sourceTable } from "./chart-data.js";
import { chartOptions } from "./chart-options.js";
import { h, mount } from "./dom.js";
import { isMetric } from "./metrics.js";

const uPlot = window.uPlot; // a classic script, loaded before the modules

const SAMPLES = 1000; // points per run and metric in a history request
const LIVE_POINTS = 5 * SAMPLES; // past this many points a live source is read again, downsampled

export class ChartGrid {
  constructor(ctx, project, sources, metrics) {
    this.ctx = ctx;
    this.project = project;
    this.sources = sources;
    this.metrics = [...metrics];
    this.charts = new Map(); // metric -> uPlot
    this.el = h("div", { class: "charts" });
    this.timer = null;
    this.reloadTimer = null;
    this.reloading = false;
    this.stale = false;
    this.remake = false;
    const resize = new ResizeObserver(() => this.resize());
    resize.observe(this.el);
    ctx.onClose(() => {
      resize.disconnect();
      clearTimeout(this.timer);
      clearTimeout(this.reloadTimer);
      this.destroy();
    });
  }

  async load() {
    await Promise.all(this.sources.map((s) => this.fetch(s)));
  }

  async fetch(s) {
    s.loading = true;
    s.pending ??= [];
    const body =
      this.metrics.length === 0
        ? { _step: [] }
        : await getJSON(
            `${runPath(this.project, s.id)}/history`,
            {
              keys: this.metrics.join(","),
              samples: SAMPLES,
              format: "columns",
              min_step: s.minStep || null,
              run_no: s.runNo,
            },
            this.ctx.signal,
          );
    const steps = body._step ?? [];
    const cols = {};
    for (const m of this.metrics) cols[m] = body[m] ?? steps.map(() => null);
    s.data = { steps, cols };
    if (steps.length) s.lastStep = Math.max(s.lastStep ?? -1, steps[steps.length - 1]);
    s.loading = false;
    const pending = s.pending.splice(0);
    if (pending.length) this.append(s, pending);
  }

  // Rows from the live stream: appended past what the source holds, in order.
  append(s, rows) {
    if (s.loading) {
      s.pending.push(...rows);
      return;
    }
    const fresh = new Set();
    for (const row of rows) {
      const step = row._step;
      if (s.lastStep !== null && s.lastStep !== undefined && step <= s.lastStep) continue;
      s.data.steps.push(step);
      for (const m of this.metrics) s.data.cols[m].push(row[m] === undefined ? null : row[m]);
      s.lastStep = step;
      for (const [k, v] of Object.entries(row)) if (isMetric(k, v) && !this.metrics.includes(k)) fresh.add(k);
    }
    if (fresh.size) {
      for (const k of fresh) {
        this.metrics.push(k);
        for (const src of this.sources) if (src.data) src.data.cols[k] = src.data.steps.map(() => null);
      }
      this.metrics.sort();
      this.reload(true); // a metric first seen live: read every source again with it
    } else if (s.data.steps.length > LIVE_POINTS) {
      this.reload(false); // a long live session: back to a downsampled history
    } else this.schedule();
  }

  // Read every source again, soon: one read at a time, again while asked for during
  // one; then update the charts, or make them anew.
  reload(remake) {
    this.remake ||= remake;
    this.stale = true;
    if (this.reloading) return;
    this.reloading = true;
    this.reloadTimer = setTimeout(async () => {
      try {
        while (this.stale) {
          this.stale = false;
          await this.load();
        }
        if (this.remake) this.render();
        else this.update();
        this.remake = false;
      } catch (err) {
        if (err.name !== "AbortError") console.error(err);
      } finally {
        this.reloading = false;
      }
    }, 300);
  }

  schedule() {
    if (this.timer === null) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.update();
      }, 150);
    }
  }

  data(metric) {
    return uPlot.join(this.sources.map((s) => sourceTable(s, metric)));
  }

  destroy() {
    for (const u of this.charts.values()) u.destroy();
    this.charts.clear();
    window.__charts = {};
  }

  render() {
    this.destroy();
    if (this.metrics.length === 0) {
      mount(this.el, h("div", { class: "card empty muted" }, "No numeric metrics logged yet."));
      return;
    }
    this.el.replaceChildren();
    for (const metric of this.metrics) {
      const plot = h("div", { class: "plot" });
      const card = h("section", { class: "card chart", dataset: { metric } }, h("h3", null, metric), plot);
      this.el.append(card);
      const u = new uPlot(this.options(this.width(card)), this.data(metric), plot);
      this.charts.set(metric, u);
      window.__charts[metric] = u;
    }
  }

  update() {
    for (const [metric, u] of this.charts) u.setData(this.data(metric));
  }

  width(card) {
    return Math.max(240, (card ?? this.el.querySelector(".chart"))?.clientWidth - 24 || 480);
  }

  resize() {
    const card = this.el.querySelector(".chart");
    if (!card) return;
    const width = this.width(card);
    for (const u of this.charts.values()) if (u.width !== width) u.setSize({ width, height: u.height });
  }

  options(width) {
    return chartOptions(this.sources, width, `stepline-${this.ctx.name}`);
  }
}
