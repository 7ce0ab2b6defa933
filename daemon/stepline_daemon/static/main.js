// The stepline dashboard's entry: hash-routed views over the daemon's read API
// (routes in router.js). Charts are uPlot, a classic script index.html loads
// first (vendored by `make assets`); live rows come over Server-Sent Events.
//
// For tests and the console: window.__charts maps each metric shown to its uPlot
// instance, window.__stepline exposes parseJSON.

import { parseJSON } from "./json.js";
import { route } from "./router.js";
import { watchStore } from "./store-badge.js";

window.__charts = {};
window.__stepline = { parseJSON };
window.addEventListener("hashchange", route);
route();
watchStore();
