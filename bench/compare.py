"""Before and after, in one invocation: ``python -m bench.compare --base REV``.

Checks out ``REV`` beside this tree (a git worktree under /tmp), then runs
``python -m bench`` from each tree in turn, alternating which goes first, so
the machine's noise falls on both alike. Each tree runs its own harness,
client and daemon (``PYTHONPATH`` points at it). Prints every figure both
runs report, median over the rounds, with after/before, and writes
``bench/results/compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def checkout(rev: str) -> Path:
    sha = subprocess.check_output(["git", "rev-parse", rev], cwd=HERE, text=True).strip()
    tree = Path(tempfile.gettempdir()) / f"stepline-base-{sha[:12]}"
    if not (tree / "bench").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=HERE, check=True)
    return tree


def run_bench(tree: Path, out: Path, args: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(tree / p) for p in ("", "client", "daemon"))
    cmd = [sys.executable, "-m", "bench", "--repeats", "1", "--out", str(out), *args]
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    medians: dict[str, Any] = json.loads((out / "bench.json").read_text())["medians"]
    return medians


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare against (e.g. main~3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "bench" / "results")
    ap.add_argument(
        "bench_args", nargs=argparse.REMAINDER, help="-- then python -m bench's options"
    )
    a = ap.parse_args()
    extra = [x for x in a.bench_args if x != "--"]
    trees = {"before": checkout(a.base), "after": HERE}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="slb-compare-") as tmp:
        for r in range(a.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for name in order:
                print(f"round {r + 1}/{a.rounds}: {name} ({trees[name]})", flush=True)
                got = run_bench(trees[name], Path(tmp) / f"{name}-{r}", extra)
                runs[name].append(flatten(got))
    keys = sorted(set(runs["before"][0]) & set(runs["after"][0]))
    rows = []
    print(
        f"\n{'figure (median of ' + str(a.rounds) + ' rounds)':<58}{'before':>14}{'after':>14}{'after/before':>14}"
    )
    for k in keys:
        before = statistics.median(r[k] for r in runs["before"])
        after = statistics.median(r[k] for r in runs["after"])
        ratio = after / before if before else float("nan")
        rows.append({"figure": k, "before": before, "after": after, "ratio": ratio})
        print(f"{k:<58}{before:>14,.2f}{after:>14,.2f}{ratio:>14.2f}")
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"base": a.base, "rounds": a.rounds, "bench_args": extra, "figures": rows, "runs": runs}
    (a.out / "compare.json").write_text(json.dumps(doc, indent=2))
    print(f"wrote {a.out / 'compare.json'}")


if __name__ == "__main__":
    main()
