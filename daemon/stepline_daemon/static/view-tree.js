// #/p/PROJECT/tree[/RUNID] : the fork tree of a run's family, or of the whole project.

import { ApiError, getJSON, projectPath } from "./api.js";
import { h, mount } from "./dom.js";
import { forkTree } from "./fork-tree.js";
import { link } from "./links.js";
import { app, setCrumbs } from "./page.js";

export async function treeView(ctx, project, id) {
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
