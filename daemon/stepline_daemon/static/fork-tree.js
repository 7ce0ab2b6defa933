// The tree of timelines: forks and rewinds are both children of the timeline they
// branch from; archived timelines (replaced by a rewind) are drawn dashed.

import { h } from "./dom.js";
import { link } from "./links.js";

export function forkTree(project, nodes, focusRunNo = null) {
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
