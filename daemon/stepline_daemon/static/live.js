// Live rows for the running sources: one EventSource each, closed with the view
// or once the run is no longer running.

import { openStream } from "./api.js";
import { parseJSON } from "./json.js";

export function followLive(ctx, grid, project, onState) {
  for (const s of grid.sources.filter((x) => x.live)) {
    // After the last step read; with nothing read yet, after the last step the run
    // had when the page loaded (-1: from the start).
    const es = openStream(project, s.id, s.lastStep ?? s.knownLastStep ?? -1);
    ctx.onClose(() => es.close());
    es.addEventListener("rows", (ev) => grid.append(s, parseJSON(ev.data).rows ?? []));
    es.addEventListener("state", (ev) => {
      const st = parseJSON(ev.data);
      onState(s, st);
      if (st.state !== "running") es.close();
    });
  }
}
