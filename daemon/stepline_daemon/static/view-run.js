// #/p/PROJECT/r/RUNID[?run_no=N] : a chart per metric (with the fork parent and
// the timelines rewinds replaced), the lineage tree, summary and config.

import { getJSON, projectPath, runPath } from "./api.js";
import { chartControls } from "./chart-controls.js";
import { ChartGrid } from "./charts.js";
import { h, mount } from "./dom.js";
import { forkTree } from "./fork-tree.js";
import { fmtNum } from "./format.js";
import { link } from "./links.js";
import { followLive } from "./live.js";
import { metricKeys } from "./metrics.js";
import { app, setCrumbs } from "./page.js";
import { ARCHIVED_DASH, chartSource, faded, legendItem, PALETTE } from "./sources.js";
import { kvTable, stateBadge, tagChips, timeCell } from "./widgets.js";

export async function runView(ctx, project, id, runNo) {
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
  // A timeline that is not its id's run (in the cluster, the later of one id
  // made on two nodes) is read by its number, as an archived one is.
  const duplicateView = run.duplicate_of !== null && run.duplicate_of !== undefined;
  const self = chartSource({
    id: run.id,
    runNo: archivedView || duplicateView ? run.run_no : null,
    label: archivedView ? `${run.id} (archived)` : duplicateView ? `${run.id} (duplicate)` : run.id,
    color: PALETTE[0],
    dash: archivedView ? ARCHIVED_DASH : null,
    minStep: forkParent?.step ?? 0,
    marker: forkParent?.step ?? null,
    live: run.state === "running" && !archivedView && !duplicateView,
    knownLastStep: run.last_step,
  });
  const others = [];
  if (forkParent) {
    const archived = isArchived(forkParent.run_no);
    others.push(
      chartSource({
        id: forkParent.id,
        runNo: forkParent.run_no,
        label: archived ? `${forkParent.id} (archived)` : forkParent.id,
        color: archived ? faded(PALETTE[1]) : PALETTE[1],
        dash: archived ? ARCHIVED_DASH : null,
        live: forkParent.state === "running" && !archived,
      }),
    );
  }
  const older = run.archived ?? [];
  for (const a of older) {
    others.push(
      chartSource({
        id: a.id,
        runNo: a.run_no,
        label: older.length > 1 ? `${a.id} (archived #${a.run_no})` : `${a.id} (archived)`,
        color: faded(PALETTE[0]),
        dash: ARCHIVED_DASH,
        minStep: a.step,
        marker: a.step,
        markerLabel: "rewind",
      }),
    );
  }
  // Drawn in order: the run itself last, on top of its parent and old timelines.
  const grid = new ChartGrid(ctx, project, [...others, self], metricKeys([run.summary]));
  await grid.load();
  if (ctx.closed) return;

  const parentLink = () => forkParent && { ...forkParent, archived: isArchived(forkParent.run_no) };
  let badge = stateBadge(run.state);
  let meta = runMeta(project, run, parentLink());
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
      const freshMeta = runMeta(project, run, parentLink());
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
    // Continued from another node (this node shows its own rows only).
    run.origin
      ? h(
          "span",
          { class: "origin", title: `timeline ${run.origin.timeline} in ${run.origin.cluster}` },
          ` · continues node ${run.origin.node} @ step ${run.origin.step}; earlier rows are in the cluster`,
        )
      : null,
    // The cluster store: one id made on two nodes keeps both, the later flagged.
    (run.duplicates ?? []).map((d) =>
      h("span", { class: "duplicate" }, [
        " · same id also made on node ",
        h("a", { href: link.run(project, run.id, d.run_no) }, `${d.node} (timeline ${d.run_no})`),
      ]),
    ),
    run.duplicate_of != null
      ? h("span", { class: "duplicate" }, [
          " · a duplicate: this id was made first as ",
          h("a", { href: link.run(project, run.id, null) }, `timeline ${run.duplicate_of}`),
        ])
      : null,
  );
}
