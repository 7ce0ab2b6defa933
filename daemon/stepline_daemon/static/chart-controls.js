// Chart controls: the smoothing slider and the log-scale toggle, shared by all charts.

import { h } from "./dom.js";
import { prefs } from "./prefs.js";

export function chartControls(grid) {
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
