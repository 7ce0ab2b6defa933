// The header's store badge: which store this page reads (a node's, or the
// cluster's), and for a node that replicates, how far the cluster is behind.

import { getJSON } from "./api.js";

const EVERY_MS = 5000;
// Past this, the badge warns: replication normally lags about a second.
const LATE_SECONDS = 10;

function describe(status) {
  const c = status.cluster;
  if (status.store === "cluster") {
    return { text: `cluster · ${c.url}`, title: "Every node's runs, from the cluster store", warn: false };
  }
  if (!c) return null; // a node on its own: nothing to say
  const rows = c.lag_rows.toLocaleString();
  const lag = `lag ${rows} rows, ${c.lag_seconds.toFixed(1)} s`;
  if (!c.connected) {
    return { text: `cluster unreachable · ${lag}`, title: c.last_error ?? c.url, warn: true };
  }
  return { text: `replicating · ${lag}`, title: `node ${c.node} → ${c.url}`, warn: c.lag_seconds > LATE_SECONDS };
}

async function refresh(badge) {
  try {
    const shown = describe(await getJSON("/api/status"));
    badge.hidden = shown === null;
    if (shown) {
      badge.textContent = shown.text;
      badge.title = shown.title;
      badge.classList.toggle("store-late", shown.warn);
    }
  } catch {
    // The daemon restarting: keep the last word until it answers again.
  }
}

export function watchStore() {
  const badge = document.getElementById("store-badge");
  if (!badge) return;
  refresh(badge);
  setInterval(() => refresh(badge), EVERY_MS);
}
