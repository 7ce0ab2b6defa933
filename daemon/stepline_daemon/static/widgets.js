// Small pieces shared by several views.

import { h } from "./dom.js";
import { fmtAgo, fmtDate, fmtValue } from "./format.js";

export function timeCell(seconds) {
  return h("time", { title: fmtDate(seconds) }, fmtAgo(seconds));
}

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}`, dataset: { role: "state" } }, state);
}

export function tagChips(tags) {
  return h(
    "span",
    { class: "tags" },
    (tags ?? []).map((t) => h("span", { class: "tag" }, t)),
  );
}

export function kvTable(obj) {
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
