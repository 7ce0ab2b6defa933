// The stepline dashboard: hash-routed views over the daemon's read API.
//
//   #/                              projects
//   #/p/PROJECT                     runs table (sort, filter, select for compare)
//   #/p/PROJECT/r/RUNID[?run_no=N]  run page: a chart per metric, lineage tree, summary, config
//   #/p/PROJECT/compare?runs=a,b    several runs on one chart per metric
//   #/p/PROJECT/tree[/RUNID]        fork tree (of the run's family, or of the whole project)
//
// Charts are uPlot (vendored by `make assets`); live rows come over Server-Sent Events.
// For tests and the console: window.__charts maps each metric shown to its uPlot
// instance, window.__stepline exposes parseJSON, and <body data-view data-state>
// says which view is up and whether it finished loading.

const uPlot = window.uPlot;

const SAMPLES = 1000; // points per run and metric in a history request
const LIVE_POINTS = 5 * SAMPLES; // past this many points a live source is read again, downsampled
const PALETTE = [
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
const ARCHIVED_DASH = [6, 4];
const faded = (color) => `${color}a6`; // archived timelines: the run's colour, dashed and lighter
const STATES = ["running", "finished", "failed", "crashed"];

// ------------------------------------------------------------------ JSON

// The API writes NaN and ±Infinity as bare tokens (as W&B does), which JSON.parse
// rejects. Outside strings, each such token becomes a tagged string that the
// reviver turns back into the number.
const NUM_TAG = "\u0000stepline-number:";

export function parseJSON(text) {
  if (!/NaN|Infinity/.test(text)) return JSON.parse(text);
  let out = "";
  let from = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      // A backslash escapes the next character, whatever it is; a bare quote ends the string.
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') {
      inString = true;
      continue;
    }
    let token = null;
    if (c === "N" && text.startsWith("NaN", i)) token = "NaN";
    else if (c === "I" && text.startsWith("Infinity", i)) token = "Infinity";
    else if (c === "-" && text.startsWith("-Infinity", i)) token = "-Infinity";
    if (token !== null) {
      out += text.slice(from, i) + JSON.stringify(NUM_TAG + token);
      i += token.length - 1;
      from = i + 1;
    }
  }
  out += text.slice(from);
  return JSON.parse(out, (_key, v) =>
    typeof v === "string" && v.startsWith(NUM_TAG) ? Number(v.slice(NUM_TAG.length)) : v,
  );
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;
const projectPath = (project) => `/api/projects/${enc(project)}`;
const runPath = (project, id) => `${projectPath(project)}/runs/${enc(id)}`;

async function getJSON(path, params, signal) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params ?? {})) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, String(v));
  }
  const resp = await fetch(url, { signal, headers: { Accept: "application/json" } });
  const text = await resp.text();
  let body = null;
  try {
    body = parseJSON(text);
  } catch {
    // reported below
  }
  if (!resp.ok) {
    const err = body?.error;
    throw new ApiError(resp.status, err?.code ?? "http", err?.message ?? `${resp.status} ${resp.statusText}`);
  }
  if (body === null) throw new ApiError(resp.status, "bad_json", `malformed JSON from ${url.pathname}`);
  return body;
}

// ------------------------------------------------------------------ DOM and formatting

const present = (c) => c !== null && c !== undefined && c !== false;

// Replace a node's children; null, undefined and false stand for "nothing here".
function mount(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter(present));
}

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity).filter(present)) node.append(c instanceof Node ? c : String(c));
  return node;
}

const link = {
  projects: () => "#/",
  project: (p) => `#/p/${enc(p)}`,
  run: (p, id, runNo = null) => `#/p/${enc(p)}/r/${enc(id)}${runNo === null ? "" : `?run_no=${runNo}`}`,
  compare: (p, ids) => `#/p/${enc(p)}/compare?runs=${ids.map(enc).join(",")}`,
  tree: (p, id = null) => `#/p/${enc(p)}/tree${id === null ? "" : `/${enc(id)}`}`,
};

function fmtNum(v) {
  if (typeof v !== "number") return v === null || v === undefined ? "—" : String(v);
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return String(Number(v.toPrecision(4)));
}

function fmtValue(v) {
  if (typeof v === "number") return fmtNum(v);
  if (v === null || v === undefined) return "—";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function fmtAgo(seconds) {
  if (typeof seconds !== "number") return "—";
  const d = Date.now() / 1000 - seconds;
  if (d < 60) return "just now";
  if (d < 3600) return `${Math.floor(d / 60)}m ago`;
  if (d < 86400) return `${Math.floor(d / 3600)}h ago`;
  return `${Math.floor(d / 86400)}d ago`;
}

const fmtDate = (seconds) => (typeof seconds === "number" ? new Date(seconds * 1000).toLocaleString() : "");

function timeCell(seconds) {
  return h("time", { title: fmtDate(seconds) }, fmtAgo(seconds));
}

function stateBadge(state) {
  return h("span", { class: `badge state-${state}`, dataset: { role: "state" } }, state);
}

function tagChips(tags) {
  return h(
    "span",
    { class: "tags" },
    (tags ?? []).map((t) => h("span", { class: "tag" }, t)),
  );
}

// A metric is a numeric value under a key that is not one of the underscore keys.
const isMetric = (key, value) => !key.startsWith("_") && typeof value === "number";

function metricKeys(summaries) {
  const keys = new Set();
  for (const summary of summaries) {
    for (const [k, v] of Object.entries(summary ?? {})) if (isMetric(k, v)) keys.add(k);
  }
  return [...keys].sort();
}

// ------------------------------------------------------------------ preferences

const prefs = {
  smoothing: Number(localStorage.getItem("stepline.smoothing") ?? 0),
  log: localStorage.getItem("stepline.log") === "1",
  save() {
    localStorage.setItem("stepline.smoothing", String(this.smoothing));
    localStorage.setItem("stepline.log", this.log ? "1" : "0");
  },
};

// ------------------------------------------------------------------ view lifecycle

// Everything a view opens (requests, streams, charts, observers) closes with it.
class ViewContext {
  constructor(name) {
    this.name = name;
    this.closed = false;
    this.aborter = new AbortController();
    this.cleanups = [];
  }
  get signal() {
    return this.aborter.signal;
  }
  onClose(fn) {
    this.cleanups.push(fn);
  }
  close() {
    this.closed = true;
    this.aborter.abort();
    for (const fn of this.cleanups.splice(0).reverse()) fn();
  }
}

let current = null;
const app = () => document.getElementById("app");

function setCrumbs(...items) {
  const nav = document.getElementById("crumbs");
  mount(
    nav,
    ...items.flatMap((item, i) => [
      i ? h("span", { class: "sep" }, "/") : null,
      item.href ? h("a", { href: item.href }, item.text) : h("span", null, item.text),
    ]),
  );
}

function showError(err) {
  document.body.dataset.state = "error";
  const where = err instanceof ApiError ? `${err.status} ${err.code}` : "error";
  mount(
    app(),
    h("div", { class: "error-box" }, h("strong", null, where), h("p", null, err.message ?? String(err))),
  );
}

async function route() {
  current?.close();
  window.__charts = {};
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  let view = null;
  if (parts.length === 0) view = ["projects", (ctx) => projectsView(ctx)];
  else if (parts[0] === "p" && parts.length >= 2) {
    const project = parts[1];
    if (parts.length === 2) view = ["runs", (ctx) => runsView(ctx, project)];
    else if (parts[2] === "r" && parts.length === 4) {
      const runNo = params.get("run_no");
      view = ["run", (ctx) => runView(ctx, project, parts[3], runNo === null ? null : Number(runNo))];
    } else if (parts[2] === "compare" && parts.length === 3) {
      const ids = (params.get("runs") ?? "").split(",").filter(Boolean);
      view = ["compare", (ctx) => compareView(ctx, project, ids)];
    } else if (parts[2] === "tree" && parts.length <= 4) {
      view = ["tree", (ctx) => treeView(ctx, project, parts[3] ?? null)];
    }
  }
  if (view === null) {
    document.body.dataset.view = "none";
    showError(new ApiError(404, "not_found", `no page at #${raw}`));
    return;
  }
  const ctx = (current = new ViewContext(view[0]));
  document.body.dataset.view = ctx.name;
  document.body.dataset.state = "loading";
  try {
    await view[1](ctx);
    if (!ctx.closed) document.body.dataset.state = "ready";
  } catch (err) {
    if (ctx.closed || err.name === "AbortError") return;
    showError(err);
    console.error(err); // a view that fails to load is a bug or a daemon problem: say so
  }
}

// ------------------------------------------------------------------ projects

async function projectsView(ctx) {
  setCrumbs({ text: "Projects" });
  const { projects } = await getJSON("/api/projects", null, ctx.signal);
  if (projects.length === 0) {
    mount(
      app(),
      h("h1", null, "Projects"),
      h(
        "div",
        { class: "card empty" },
        h("p", null, "No runs yet. Log one:"),
        h(
          "pre",
          null,
          'import stepline\nrun = stepline.init(project="llm")\nrun.log({"loss": 0.5})\nrun.finish()',
        ),
      ),
    );
    return;
  }
  mount(
    app(),
    h("h1", null, "Projects"),
    h(
      "div",
      { class: "table-wrap narrow" },
      h(
        "table",
        { class: "table projects" },
        h("thead", null, h("tr", null, h("th", null, "Project"), h("th", { class: "num" }, "Runs"))),
        h(
          "tbody",
          null,
          projects.map((p) =>
            h(
              "tr",
              null,
              h("td", null, h("a", { href: link.project(p.name) }, p.name)),
              h("td", { class: "num" }, p.runs ?? "—"),
            ),
          ),
        ),
      ),
    ),
  );
}

// ------------------------------------------------------------------ runs table

// Filters, sort and selection live as long as the page, per project.
const tableState = new Map();

function runsTableState(project) {
  if (!tableState.has(project)) {
    tableState.set(project, { q: "", tag: "", state: "", sort: "created", dir: -1, selected: new Set() });
  }
  return tableState.get(project);
}

async function runsView(ctx, project) {
  setCrumbs({ text: "Projects", href: link.projects() }, { text: project });
  const { runs } = await getJSON(`${projectPath(project)}/runs`, null, ctx.signal);
  const st = runsTableState(project);
  for (const id of [...st.selected]) if (!runs.some((r) => r.id === id)) st.selected.delete(id);

  const summaryKeys = metricKeys(runs.map((r) => r.summary)).slice(0, 6);
  const columns = [
    { key: "id", label: "Run", value: (r) => r.id, cell: (r) => runCell(project, r) },
    { key: "state", label: "State", value: (r) => r.state, cell: (r) => stateBadge(r.state) },
    { key: "tags", label: "Tags", value: (r) => (r.tags ?? []).join(","), cell: (r) => tagChips(r.tags) },
    { key: "parent", label: "Parent", value: (r) => r.parent?.id ?? "", cell: (r) => parentCell(project, r) },
    {
      key: "last_step",
      label: "Step",
      num: true,
      value: (r) => r.last_step,
      cell: (r) => fmtNum(r.last_step),
    },
    { key: "rows", label: "Rows", num: true, value: (r) => r.rows, cell: (r) => fmtNum(r.rows) },
    ...summaryKeys.map((k) => ({
      key: `summary.${k}`,
      label: k,
      num: true,
      value: (r) => r.summary?.[k],
      cell: (r) => fmtNum(r.summary?.[k]),
    })),
    {
      key: "created",
      label: "Created",
      num: true,
      value: (r) => r.created,
      cell: (r) => timeCell(r.created),
    },
    {
      key: "updated",
      label: "Updated",
      num: true,
      value: (r) => r.updated,
      cell: (r) => timeCell(r.updated),
    },
  ];

  const allTags = [...new Set(runs.flatMap((r) => r.tags ?? []))].sort();
  const count = h("span", { class: "muted" });
  const compareBtn = h("button", {
    class: "primary",
    type: "button",
    onclick: () => {
      location.hash = link.compare(project, [...st.selected]);
    },
  });
  const tbody = h("tbody");
  const thead = h("thead");

  const matches = (r) => {
    const q = st.q.trim().toLowerCase();
    if (q && !`${r.id} ${r.name ?? ""}`.toLowerCase().includes(q)) return false;
    if (st.tag && !(r.tags ?? []).includes(st.tag)) return false;
    return !st.state || r.state === st.state;
  };

  const renderBody = () => {
    const col = columns.find((c) => c.key === st.sort) ?? columns[0];
    const shown = runs.filter(matches).sort((a, b) => st.dir * compareValues(col.value(a), col.value(b)));
    tbody.replaceChildren(
      ...shown.map((r) =>
        h(
          "tr",
          { dataset: { runId: r.id } },
          h(
            "td",
            { class: "check" },
            h("input", {
              type: "checkbox",
              "aria-label": `select ${r.id}`,
              checked: st.selected.has(r.id),
              onchange: (e) => {
                if (e.target.checked) st.selected.add(r.id);
                else st.selected.delete(r.id);
                renderToolbar();
              },
            }),
          ),
          columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(r))),
        ),
      ),
    );
    if (shown.length === 0) {
      tbody.append(
        h("tr", null, h("td", { colspan: columns.length + 1, class: "muted empty" }, "No runs match.")),
      );
    }
    count.textContent = `${shown.length} of ${runs.length} runs`;
    thead.replaceChildren(
      h(
        "tr",
        null,
        h("th", { class: "check" }),
        columns.map((c) =>
          h(
            "th",
            {
              class: [c.num ? "num" : "", "sortable", st.sort === c.key ? "sorted" : ""].join(" "),
              "aria-sort": st.sort === c.key ? (st.dir > 0 ? "ascending" : "descending") : null,
              dataset: { key: c.key },
              onclick: () => {
                st.dir = st.sort === c.key ? -st.dir : c.num ? -1 : 1;
                st.sort = c.key;
                renderBody();
              },
            },
            c.label,
            st.sort === c.key ? (st.dir > 0 ? " ▲" : " ▼") : "",
          ),
        ),
      ),
    );
  };

  const renderToolbar = () => {
    const n = st.selected.size;
    compareBtn.textContent = n ? `Compare ${n} run${n === 1 ? "" : "s"}` : "Compare";
    compareBtn.disabled = n === 0;
  };

  const select = (name, options, value, label) =>
    h(
      "select",
      { name, "aria-label": label, onchange: (e) => ((st[name] = e.target.value), renderBody()) },
      h("option", { value: "" }, label),
      options.map((o) => h("option", { value: o, selected: o === value }, o)),
    );

  mount(
    app(),
    h(
      "div",
      { class: "page-head" },
      h("h1", null, project),
      h("a", { class: "button", href: link.tree(project) }, "Fork tree"),
    ),
    h(
      "div",
      { class: "toolbar" },
      h("input", {
        type: "search",
        name: "q",
        placeholder: "Filter by name or id",
        value: st.q,
        "aria-label": "filter by name",
        oninput: (e) => ((st.q = e.target.value), renderBody()),
      }),
      select("tag", allTags, st.tag, "All tags"),
      select("state", STATES, st.state, "All states"),
      count,
      h("span", { class: "spacer" }),
      compareBtn,
    ),
    h("div", { class: "table-wrap" }, h("table", { class: "table runs" }, thead, tbody)),
  );
  renderBody();
  renderToolbar();
}

function compareValues(a, b) {
  const missing = (v) => v === null || v === undefined || (typeof v === "number" && Number.isNaN(v));
  if (missing(a) || missing(b)) return missing(a) - missing(b);
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

function runCell(project, r) {
  return h(
    "span",
    { class: "run-cell" },
    h("a", { href: link.run(project, r.id) }, r.id),
    r.name && r.name !== r.id ? h("span", { class: "muted" }, r.name) : null,
  );
}

function parentCell(project, r) {
  const p = r.parent;
  if (!p) return "";
  if (p.id === r.id)
    return h("span", { class: "muted", title: `rewound at step ${p.step}` }, `↺ @ ${p.step}`);
  return h(
    "span",
    null,
    h("a", { href: link.run(project, p.id) }, p.id),
    h("span", { class: "muted" }, ` @ ${p.step}`),
  );
}

// ------------------------------------------------------------------ charts

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

// A source is one run timeline read with one history request: one line per metric.
//   { id, runNo, label, color, dash, minStep, marker, live, data: {steps, cols}, lastStep }
// `marker` is a step (a fork or rewind point): the source's first point is marked
// and a vertical rule drawn there.
function sourceTable(source, metric) {
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

function firstDefined(values) {
  const i = values.findIndex((v) => v !== null && v !== undefined);
  return i < 0 ? null : i;
}

class ChartGrid {
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
      const u = new uPlot(this.options(metric, this.width(card)), this.data(metric), plot);
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

  options(metric, width) {
    const markers = this.sources.filter((s) => s.marker !== null && s.marker !== undefined);
    return {
      width,
      height: 220,
      padding: [20, 12, 0, 0], // room above the plot for the fork labels
      pxAlign: 0, // no pixel snapping: slow curves stay smooth instead of stair-stepped
      scales: { x: { time: false }, y: { distr: prefs.log ? 3 : 1 } },
      cursor: { sync: { key: `stepline-${this.ctx.name}` }, drag: { x: true, y: false } },
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
      series: [
        { label: "step", value: (u, v) => fmtNum(v) },
        ...this.sources.map((s) => ({
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
              if (s.marker === null || s.marker === undefined) return null;
              const i = firstDefined(u.data[si]);
              return i === null ? null : [i];
            },
          },
        })),
      ],
      hooks: {
        // A faint vertical rule at each fork or rewind step, labelled.
        draw: [
          (u) => {
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
              ctx.fillText(
                `${s.markerLabel ?? "fork"} @ ${s.marker}`,
                x + 4 * devicePixelRatio,
                top - 6 * devicePixelRatio,
              );
            }
            ctx.restore();
          },
        ],
      },
    };
  }
}

// Chart controls: the smoothing slider and the log-scale toggle, shared by all charts.
function chartControls(grid) {
  const out = h("output", null, prefs.smoothing.toFixed(2));
  const slider = h("input", {
    type: "range",
    name: "smoothing",
    min: "0",
    max: "0.99",
    step: "0.01",
    value: String(prefs.smoothing),
    "aria-label": "smoothing",
    oninput: (e) => {
      prefs.smoothing = Number(e.target.value);
      out.textContent = prefs.smoothing.toFixed(2);
      prefs.save();
      grid.schedule();
    },
  });
  const log = h("input", {
    type: "checkbox",
    name: "log",
    checked: prefs.log,
    onchange: (e) => {
      prefs.log = e.target.checked;
      prefs.save();
      grid.render(); // a scale's distribution is fixed when a chart is made
    },
  });
  return h(
    "div",
    { class: "controls" },
    h("label", { class: "control" }, "Smoothing", slider, out),
    h("label", { class: "control" }, log, "Log scale"),
  );
}

// Live rows for the running sources: one EventSource each, closed with the view
// or once the run is no longer running.
function followLive(ctx, grid, project, onState) {
  for (const s of grid.sources.filter((x) => x.live)) {
    const url = new URL(`${runPath(project, s.id)}/stream`, location.origin);
    // After the last step read; with nothing read yet, after the last step the run
    // had when the page loaded (-1: from the start).
    url.searchParams.set("after", String(s.lastStep ?? s.knownLastStep ?? -1));
    const es = new EventSource(url);
    ctx.onClose(() => es.close());
    es.addEventListener("rows", (ev) => grid.append(s, parseJSON(ev.data).rows ?? []));
    es.addEventListener("state", (ev) => {
      const st = parseJSON(ev.data);
      onState(s, st);
      if (st.state !== "running") es.close();
    });
  }
}

function legendItem(source, project) {
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

// ------------------------------------------------------------------ run page

async function runView(ctx, project, id, runNo) {
  setCrumbs(
    { text: "Projects", href: link.projects() },
    { text: project, href: link.project(project) },
    { text: id },
  );
  const [run, tree] = await Promise.all([
    getJSON(runPath(project, id), { run_no: runNo }, ctx.signal),
    getJSON(`${projectPath(project)}/tree`, null, ctx.signal),
  ]);
  const archivedView = run.archived_by !== null && run.archived_by !== undefined;
  const nodes = new Map(tree.nodes.map((n) => [n.run_no, n]));
  const isArchived = (no) => {
    const n = nodes.get(no);
    return n !== undefined && n.archived_by !== null && n.archived_by !== undefined;
  };

  // The fork parent: the nearest ancestor with another id (nearer ones are this
  // run's own timelines, replaced by rewinds).
  const forkParent = (run.lineage ?? []).find((a) => a.id !== run.id) ?? null;
  const self = {
    id: run.id,
    runNo: archivedView ? run.run_no : null,
    label: archivedView ? `${run.id} (archived)` : run.id,
    color: PALETTE[0],
    dash: archivedView ? ARCHIVED_DASH : null,
    minStep: forkParent?.step ?? 0,
    marker: forkParent?.step ?? null,
    markerLabel: "fork",
    live: run.state === "running" && !archivedView,
    lastStep: null,
    knownLastStep: run.last_step,
  };
  const others = [];
  if (forkParent) {
    const archived = isArchived(forkParent.run_no);
    others.push({
      id: forkParent.id,
      runNo: forkParent.run_no,
      label: archived ? `${forkParent.id} (archived)` : forkParent.id,
      color: archived ? faded(PALETTE[1]) : PALETTE[1],
      dash: archived ? ARCHIVED_DASH : null,
      minStep: 0,
      marker: null,
      live: forkParent.state === "running" && !archived,
      lastStep: null,
    });
  }
  const older = run.archived ?? [];
  for (const a of older) {
    others.push({
      id: a.id,
      runNo: a.run_no,
      label: older.length > 1 ? `${a.id} (archived #${a.run_no})` : `${a.id} (archived)`,
      color: faded(PALETTE[0]),
      dash: ARCHIVED_DASH,
      minStep: a.step,
      marker: a.step,
      markerLabel: "rewind",
      live: false,
      lastStep: null,
    });
  }
  // Drawn in order: the run itself last, on top of its parent and old timelines.
  const grid = new ChartGrid(ctx, project, [...others, self], metricKeys([run.summary]));
  await grid.load();
  if (ctx.closed) return;

  let badge = stateBadge(run.state);
  let meta = runMeta(project, run, forkParent && { ...forkParent, archived: isArchived(forkParent.run_no) });
  mount(
    app(),
    archivedView
      ? h(
          "div",
          { class: "notice" },
          `An archived timeline: a rewind replaced it (timeline ${run.archived_by}). `,
          h("a", { href: link.run(project, run.id) }, "Open the current run"),
        )
      : null,
    h(
      "div",
      { class: "page-head" },
      h(
        "h1",
        { class: "run-title" },
        run.id,
        run.name && run.name !== run.id ? h("span", { class: "name" }, run.name) : null,
      ),
      badge,
      tagChips(run.tags),
      h("span", { class: "spacer" }),
      h("a", { class: "button", href: link.tree(project, run.id) }, "Fork tree"),
    ),
    meta,
    h(
      "div",
      { class: "run-layout" },
      h(
        "div",
        { class: "main" },
        h(
          "div",
          { class: "chart-bar" },
          h(
            "ul",
            { class: "series-key" },
            [self, ...others].map((s) => legendItem(s, project)),
          ),
          h("span", { class: "spacer" }),
          chartControls(grid),
        ),
        grid.el,
      ),
      h(
        "aside",
        { class: "side" },
        h("section", { class: "card" }, h("h3", null, "Lineage"), forkTree(project, tree.nodes, run.run_no)),
        h("section", { class: "card" }, h("h3", null, "Summary"), kvTable(run.summary)),
        h("section", { class: "card" }, h("h3", null, "Config"), kvTable(run.config)),
      ),
    ),
  );
  grid.render();
  followLive(ctx, grid, project, (s, st) => {
    if (s === self) {
      // Every commit and the end of the run come as a state event.
      Object.assign(run, {
        state: st.state,
        last_step: st.last_step,
        rows: st.rows,
        updated: Date.now() / 1000,
      });
      const fresh = stateBadge(st.state);
      badge.replaceWith(fresh);
      badge = fresh;
      const freshMeta = runMeta(
        project,
        run,
        forkParent && { ...forkParent, archived: isArchived(forkParent.run_no) },
      );
      meta.replaceWith(freshMeta);
      meta = freshMeta;
    }
    if (st.state !== "running") s.live = false;
  });
}

function runMeta(project, run, forkParent) {
  const older = run.archived ?? [];
  return h(
    "p",
    { class: "meta" },
    [
      `timeline ${run.run_no}`,
      `last step ${fmtNum(run.last_step)}`,
      `${fmtNum(run.rows)} rows`,
      run.dropped ? `${run.dropped} dropped` : null,
      run.exit_code !== null && run.exit_code !== undefined ? `exit code ${run.exit_code}` : null,
    ]
      .filter(Boolean)
      .join(" · "),
    " · created ",
    timeCell(run.created),
    " · updated ",
    timeCell(run.updated),
    forkParent
      ? [
          " · forked from ",
          h(
            "a",
            { href: link.run(project, forkParent.id, forkParent.archived ? forkParent.run_no : null) },
            forkParent.id,
          ),
          ` @ step ${forkParent.step}`,
        ]
      : null,
    older.length ? ` · rewound ${older.length}× (last at step ${older[0].step})` : null,
  );
}

function kvTable(obj) {
  const entries = Object.entries(obj ?? {}).sort(([a], [b]) => a.localeCompare(b));
  if (entries.length === 0) return h("p", { class: "muted" }, "—");
  const show = (k, v) => (k === "_timestamp" && typeof v === "number" ? fmtDate(v) : fmtValue(v));
  return h(
    "table",
    { class: "kv" },
    h(
      "tbody",
      null,
      entries.map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, show(k, v)))),
    ),
  );
}

// ------------------------------------------------------------------ compare

async function compareView(ctx, project, ids) {
  setCrumbs(
    { text: "Projects", href: link.projects() },
    { text: project, href: link.project(project) },
    { text: "Compare" },
  );
  const { runs } = await getJSON(`${projectPath(project)}/runs`, null, ctx.signal);
  const byId = new Map(runs.map((r) => [r.id, r]));
  const missing = ids.filter((id) => !byId.has(id));
  if (missing.length) throw new ApiError(404, "not_found", `no run ${missing.join(", ")} in ${project}`);
  if (ids.length === 0) throw new ApiError(400, "bad_request", "select runs to compare in the runs table");
  const chosen = new Set(ids);
  const sources = ids.map((id, i) => {
    const r = byId.get(id);
    // A fork whose parent is in the comparison starts at its fork point.
    const fork = r.parent && r.parent.id !== r.id && chosen.has(r.parent.id) ? r.parent.step : null;
    return {
      id,
      runNo: null,
      label: id,
      color: PALETTE[i % PALETTE.length],
      dash: null,
      minStep: fork ?? 0,
      marker: fork,
      markerLabel: "fork",
      live: r.state === "running",
      lastStep: null,
      knownLastStep: r.last_step,
    };
  });
  const grid = new ChartGrid(ctx, project, sources, metricKeys(ids.map((id) => byId.get(id).summary)));
  await grid.load();
  if (ctx.closed) return;
  const badges = new Map(ids.map((id) => [id, stateBadge(byId.get(id).state)]));
  mount(
    app(),
    h("div", { class: "page-head" }, h("h1", null, `Compare ${ids.length} runs`)),
    h(
      "div",
      { class: "chart-bar" },
      h(
        "ul",
        { class: "series-key" },
        sources.map((s) => {
          const li = legendItem(s, project);
          li.append(" ", badges.get(s.id));
          return li;
        }),
      ),
      h("span", { class: "spacer" }),
      chartControls(grid),
    ),
    grid.el,
  );
  grid.render();
  followLive(ctx, grid, project, (s, st) => {
    const fresh = stateBadge(st.state);
    badges.get(s.id).replaceWith(fresh);
    badges.set(s.id, fresh);
    if (st.state !== "running") s.live = false;
  });
}

// ------------------------------------------------------------------ fork tree

// The tree of timelines: forks and rewinds are both children of the timeline they
// branch from; archived timelines (replaced by a rewind) are drawn dashed.
function forkTree(project, nodes, focusRunNo = null) {
  const byNo = new Map(nodes.map((n) => [n.run_no, n]));
  const kids = new Map();
  for (const n of nodes) {
    const p = n.parent_run_no;
    if (p === null || p === undefined || !byNo.has(p)) continue;
    if (!kids.has(p)) kids.set(p, []);
    kids.get(p).push(n);
  }
  for (const list of kids.values()) list.sort((a, b) => (a.step ?? 0) - (b.step ?? 0) || a.run_no - b.run_no);
  let roots = nodes.filter(
    (n) => n.parent_run_no === null || n.parent_run_no === undefined || !byNo.has(n.parent_run_no),
  );
  if (focusRunNo !== null && byNo.has(focusRunNo)) {
    let n = byNo.get(focusRunNo);
    while (byNo.has(n.parent_run_no)) n = byNo.get(n.parent_run_no);
    roots = [n];
  }
  roots.sort((a, b) => a.run_no - b.run_no);

  const item = (n) => {
    const archived = n.archived_by !== null && n.archived_by !== undefined;
    const parent = byNo.get(n.parent_run_no);
    const how = parent ? (parent.id === n.id ? "rewind" : "fork") : null;
    const classes = [
      "node",
      `state-${n.state}`,
      archived ? "archived" : "",
      n.run_no === focusRunNo ? "focus" : "",
    ];
    return h(
      "li",
      null,
      h(
        "a",
        {
          class: classes.join(" ").trim(),
          href: link.run(project, n.id, archived ? n.run_no : null),
          dataset: { runId: n.id, runNo: n.run_no },
          title: `${n.id} · timeline ${n.run_no} · ${n.state}${archived ? " · archived" : ""}`,
        },
        h("span", { class: "dot" }),
        h("span", { class: "node-id" }, n.id),
        archived ? h("span", { class: "muted" }, " archived") : null,
        h(
          "span",
          { class: "node-meta" },
          how ? `${how} @ ${n.step}` : "root",
          n.last_step !== null && n.last_step !== undefined ? ` · to ${n.last_step}` : "",
        ),
      ),
      kids.has(n.run_no) ? h("ul", null, kids.get(n.run_no).map(item)) : null,
    );
  };
  if (roots.length === 0) return h("p", { class: "muted" }, "No runs.");
  return h("ul", { class: "tree" }, roots.map(item));
}

async function treeView(ctx, project, id) {
  setCrumbs(
    { text: "Projects", href: link.projects() },
    { text: project, href: link.project(project) },
    { text: id ? `Fork tree of ${id}` : "Fork tree" },
  );
  const { nodes } = await getJSON(`${projectPath(project)}/tree`, null, ctx.signal);
  let focus = null;
  if (id !== null) {
    focus = nodes.find((n) => n.id === id && (n.archived_by === null || n.archived_by === undefined));
    if (!focus) throw new ApiError(404, "not_found", `no run ${id} in ${project}`);
  }
  mount(
    app(),
    h(
      "div",
      { class: "page-head" },
      h("h1", null, id ? `Fork tree of ${id}` : `Fork tree of ${project}`),
      h("span", { class: "spacer" }),
      id ? h("a", { class: "button", href: link.tree(project) }, "Whole project") : null,
    ),
    h(
      "p",
      { class: "muted" },
      "Each node is a timeline; a child branches from its parent at the step shown. Dashed: archived by a rewind.",
    ),
    h("div", { class: "card tree-card" }, forkTree(project, nodes, focus?.run_no ?? null)),
  );
}

// ------------------------------------------------------------------ start

window.__charts = {};
window.__stepline = { parseJSON };
window.addEventListener("hashchange", route);
route();
