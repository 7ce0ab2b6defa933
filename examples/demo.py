"""`make demo`: start a daemon on the default data dir, run the example, show the results."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import train

import stepline
from stepline import autostart, paths
from stepline.channel import listening
from stepline_daemon.process import INFO_FILE


def start_daemon(sock: Path, data: Path) -> dict[str, Any]:
    """A daemon on the default data dir that outlives the demo, so the dashboard
    stays up to look at; what its ``daemon.json`` says about it."""
    if listening(sock):
        print(f"using the daemon already listening on {sock}")
    else:
        autostart.ensure_daemon(
            sock, timeout=30, env={**os.environ, "STEPLINE_DATA_DIR": str(data)}
        )
    info_file = data / INFO_FILE
    deadline = time.monotonic() + 30
    while not info_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the file the daemon writes once it serves
    try:
        info: dict[str, Any] = json.loads(info_file.read_text())
    except (OSError, ValueError):
        return {}
    return info


def show(api: stepline.Api, project: str, run_id: str) -> None:
    r = api.run(f"{project}/{run_id}")
    rows = list(r.scan_history(keys=["train.loss"]))
    print(f"\n{project}/{run_id}  state={r.state}  rows={len(rows)}  parent={r.parent}")
    print(f"  lineage={r.lineage}  children={r.children}")
    print(
        f"  summary: train.loss(min)={r.summary.get('train.loss'):.4f} _step={r.summary['_step']}"
    )
    for row in r.history(keys=["train.loss"], samples=7, pandas=False):
        print(f"    step {row['_step']:>4}  loss {row['train.loss']:.4f}")
    old = r.rewound_from
    if old is not None:
        print(
            f"  rewound from an archived timeline with {old.last_step + 1} steps (still readable)"
        )


def main() -> None:
    sock = paths.resolve_socket(None)
    data = Path(os.environ.get("STEPLINE_DATA_DIR") or paths.default_data_dir())
    info = start_daemon(sock, data)
    ids = train.main("demo")
    api = stepline.Api()
    print("\n== resolved histories (fork-resolved, min/max-downsampled to at most 7 rows) ==")
    show(api, "demo", ids["base"])
    show(api, "demo", ids["fork"])
    api.close()
    cli = ".venv/bin/stepline"
    print(f"\ndata dir:  {data}\nsocket:    {sock}")
    if info.get("http"):
        print(
            f"dashboard: {info['http']}/#/p/demo  (the fork: {info['http']}/#/p/demo/r/{ids['fork']})"
        )
    print(f"terminal:  {cli} runs --project demo")
    print(f"           {cli} tree demo/{ids['fork']}")
    print(f"           {cli} history demo/{ids['base']} --keys train.loss --samples 10")
    if info.get("pid"):
        print(
            f"the daemon keeps running for the dashboard (pid {info['pid']}); stop it: kill {info['pid']}"
        )


if __name__ == "__main__":
    main()
