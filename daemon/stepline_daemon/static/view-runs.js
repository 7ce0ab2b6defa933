// #/p/PROJECT : the runs table (sort, filter, select for compare).

import { getJSON, projectPath } from "./api.js";
import { h, mount } from "./dom.js";
import { fmtNum } from "./format.js";
import { link } from "./links.js";
import { metricKeys } from "./metrics.js";
import { app, setCrumbs } from "./page.js";
import { stateBadge, tagChips, timeCell } from "./widgets.js";

const STATES = ["running", "finished", "failed", "crashed"];

// Filters, sort and selection live as long as the page, per project.
const tableState = new Map();

function runsTableState(project) {
  if (!tableState.has(project)) {
    tableState.set(project, { q: "", tag: "", state: "", sort: "created", dir: -1, selected: new Set() });
  }
  return tableState.get(project);
}

export async function runsView(ctx, project) {
  setCrumbs({ text: "Projects", href: link.projects() }, { text: project });
  const { runs } = await getJSON(`${projectPath(project)}/runs`, null, ctx.signal);
  const st = runsTableState(project);
  for (const id of [...st.selected]) if (!runs.some((r) => r.id === id)) st.selected.delete(id);

  const summaryKeys = metricKeys(runs.map((r) => r.summary)).slice(0, 6);
  const columns = [
    { key: "id", label: "Run", value: (r) => r.id, cell: (r) => runCell(project, r) },
    { key: "state", label: "State", value: (r) => r.state, cell: (r) => stateBadge(r.state) },
    // Only the cluster store knows which node each run was logged on.
    ...(runs.some((r) => r.node)
      ? [{ key: "node", label: "Node", value: (r) => r.node ?? "", cell: (r) => r.node ?? "" }]
      : []),
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
