// #/p/PROJECT/compare?runs=a,b : several runs on one chart per metric.

import { ApiError, getJSON, projectPath } from "./api.js";
import { chartControls } from "./chart-controls.js";
import { ChartGrid } from "./charts.js";
import { h, mount } from "./dom.js";
import { link } from "./links.js";
import { followLive } from "./live.js";
import { metricKeys } from "./metrics.js";
import { app, setCrumbs } from "./page.js";
import { chartSource, legendItem, PALETTE } from "./sources.js";
import { stateBadge } from "./widgets.js";

export async function compareView(ctx, project, ids) {
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
    return chartSource({
      id,
      color: PALETTE[i % PALETTE.length],
      minStep: fork ?? 0,
      marker: fork,
      live: r.state === "running",
      knownLastStep: r.last_step,
    });
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
