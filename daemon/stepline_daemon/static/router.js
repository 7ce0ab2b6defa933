// Hash routing: each hash names a view; the view before it closes first.
//
//   #/                              projects
//   #/p/PROJECT                     runs table (sort, filter, select for compare)
//   #/p/PROJECT/r/RUNID[?run_no=N]  run page: a chart per metric, lineage tree, summary, config
//   #/p/PROJECT/compare?runs=a,b    several runs on one chart per metric
//   #/p/PROJECT/tree[/RUNID]        fork tree (of the run's family, or of the whole project)
//
// <body data-view data-route data-state> says which view is up, for which hash, and
// whether it finished loading. The route matters to whoever waits: the hash changes
// before this runs, so "ready" alone may still be the previous page's.

import { ApiError } from "./api.js";
import { showError, ViewContext } from "./page.js";
import { compareView } from "./view-compare.js";
import { projectsView } from "./view-projects.js";
import { runView } from "./view-run.js";
import { runsView } from "./view-runs.js";
import { treeView } from "./view-tree.js";

let current = null;

export async function route() {
  current?.close();
  window.__charts = {};
  const raw = location.hash.replace(/^#/, "") || "/";
  document.body.dataset.route = raw;
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
