"""`make demo`: start a daemon on the default data dir, run the example, show the results."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import train

import stepline
from stepline import paths
from stepline.channel import listening
from stepline_daemon.process import DaemonProcess


def start_daemon(sock: Path, data: Path) -> DaemonProcess | None:
    if listening(sock):
        print(f"using the daemon already listening on {sock}")
        return None
    return DaemonProcess(data, sock).start()


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
    proc = start_daemon(sock, data)
    try:
        ids = train.main("demo")
        api = stepline.Api()
        print("\n== resolved histories (fork-resolved, downsampled to 7 rows) ==")
        show(api, "demo", ids["base"])
        show(api, "demo", ids["fork"])
        api.close()
        print(f"\ndata dir: {data}\nsocket:   {sock}")
        print(
            f"read it back: python -c \"import stepline; print(stepline.Api().run('demo/{ids['base']}').summary)\""
        )
        print(
            "(start a daemon with `.venv/bin/stepline daemon` first when the demo is not running)"
        )
    finally:
        if proc is not None:
            print(f"daemon stopped cleanly (exit code {proc.stop()})")


if __name__ == "__main__":
    main()
