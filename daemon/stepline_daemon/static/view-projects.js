// #/ : every project, with its run count.

import { getJSON } from "./api.js";
import { h, mount } from "./dom.js";
import { link } from "./links.js";
import { app, setCrumbs } from "./page.js";

export async function projectsView(ctx) {
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
