"""The read commands of the ``stepline`` CLI against the real daemon process.

Some tests run the CLI as a subprocess (exit codes, stderr, a terminal for the
progress line); the rest call ``cli.main`` in-process with captured output.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pty
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import stepline
from stepline import cli
from stepline.commands import history
from tests.conftest import Daemon

P = "clip"
SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 2.5]
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d"


@pytest.fixture(autouse=True)
def no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tables are cut to the terminal only when printing to one, or when COLUMNS says so.
    monkeypatch.delenv("COLUMNS", raising=False)


def init(d: Daemon, project: str = P, **kw: Any) -> stepline.Run:
    return stepline.init(project=project, socket=str(d.socket), **kw)


def sl(d: Daemon, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``stepline ARGS --socket S`` in-process: (exit code, stdout, stderr)."""
    code = cli.main([*args, "--socket", str(d.socket)])
    out, err = capsys.readouterr()
    return code, out, err


def sl_proc(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m stepline.cli ARGS`` as a real process."""
    full_env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "stepline.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=cwd,
    )


def log_steps(run: stepline.Run, steps: range, f: Any) -> list[dict[str, Any]]:
    """Log ``f(step)`` at each step; the rows as logged, with ``_step``."""
    out = []
    for s in steps:
        run.log(f(s), step=s, commit=True)
        out.append({"_step": s, **f(s)})
    return out


def val(s: int) -> dict[str, Any]:
    return {"loss": 1.0 / (s + 1), "s": s}


def rich(s: int) -> dict[str, Any]:
    """Every value type, a key absent early on, one holding ints and strings."""
    row: dict[str, Any] = {
        "loss": 1.0 / (s + 1),
        "n": s * 1_000_003,
        "flag": s % 2 == 0,
        "name": f'r,{s}\n"q"',  # needs CSV quoting
        "odd": SPECIAL[s % 5],
        "maybe": None if s % 3 == 0 else s * 0.5,
        "mix": s if s % 2 else f"s{s}",
    }
    if s >= 10:
        row["late"] = s * 0.25  # first seen mid-run
    return row


def pairs(text: str) -> dict[str, list[str]]:
    """The fields at the top of ``show`` as key -> values (a blank key continues
    the one above)."""
    out: dict[str, list[str]] = {}
    key = ""
    for line in text.split("\n\n")[0].splitlines():
        k, _, v = line.partition("  ")
        key = k or key
        out.setdefault(key, []).append(v.strip())
    return out


def section(text: str, title: str) -> dict[str, str]:
    """An indented ``config``/``summary`` section of ``show`` as key -> value."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    out = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        k, v = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        out[k] = v
    return out


def bits(x: float) -> bytes:
    return struct.pack(">d", x)


def same_cell(text: str, want: Any) -> bool:
    """Whether a CSV cell is exactly ``want``, decoded by type."""
    if want is None:
        return text == ""
    if type(want) is bool:
        return text == ("true" if want else "false")
    if type(want) is int:
        return text == str(want)
    if type(want) is float:
        names = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if math.isnan(want):
            return text == "NaN"
        if math.isinf(want):
            return names.get(text) == want
        return bits(float(text)) == bits(want)
    return bool(text == want)


# -------------------------------------------------------------------- runs


def test_runs_lists_projects_then_a_projects_runs(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    root = init(daemon, id="root", tags=["base", "v1"])
    log_steps(root, range(10), val)
    root.finish()
    kid = init(daemon, id="kid", fork_from="root?_step=4", name="kid the second")
    kid.log({"loss": 0.1})
    kid.finish()
    again = init(daemon, id="root", resume_from="root?_step=6")
    again.finish()
    other = init(daemon, project="other", id="solo")
    other.finish()

    code, out, err = sl(daemon, capsys, "runs")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["PROJECT", "RUNS", "UPDATED"]
    # Archived timelines are not runs: `root` counts once.
    assert [ln.split()[:2] for ln in lines[1:]] == [[P, "2"], ["other", "1"]]
    assert all(re.search(STAMP + "$", ln) for ln in lines[1:])

    code, out, err = sl(daemon, capsys, "runs", "--project", P)
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "STEP", "PARENT", "CREATED", "UPDATED", "TAGS"]
    by_id = {r.split()[0]: r for r in rows}
    assert set(by_id) == {"root", "kid"}
    assert re.fullmatch(
        rf"kid\s+kid the second\s+finished\s+5\s+root @4\s+{STAMP}\s+{STAMP}", by_id["kid"]
    )
    assert re.fullmatch(
        rf"root\s+root\s+finished\s+6\s+rewound @6\s+{STAMP}\s+{STAMP}\s+base, v1", by_id["root"]
    )
    # Oldest first; a rewind is a new timeline, so `root` is now the newest.
    assert [r.split()[0] for r in rows] == ["kid", "root"]


def test_runs_of_an_unknown_project_is_an_error(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    init(daemon, id="x").finish()
    code, out, err = sl(daemon, capsys, "runs", "-p", "nope")
    assert (code, out) == (1, "")
    assert err == "stepline: no project 'nope' (`stepline runs` lists them)\n"


def test_tables_fit_the_terminal_width(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = init(daemon, id="w", name="a-rather-long-run-name-" * 4, tags=["t" * 50])
    run.log({"loss": 1.0})
    run.finish()
    _, wide, _ = sl(daemon, capsys, "runs", "-p", P)
    assert "t" * 50 in wide and max(map(len, wide.splitlines())) > 100
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = sl(daemon, capsys, "runs", "-p", P)
    assert code == 0
    lines = out.splitlines()
    assert all(len(ln) <= 80 for ln in lines), lines
    # The name and tags give way; state and times stay whole.
    assert re.fullmatch(rf"w\s+a-rat\S*…\s+finished\s+0\s+{STAMP}\s+{STAMP}\s+ttt\S*…", lines[1])
    monkeypatch.setenv("COLUMNS", "30")  # too narrow for anything: lines are cut
    _, out, _ = sl(daemon, capsys, "runs", "-p", P)
    assert all(len(ln) == 30 and ln.endswith("…") for ln in out.splitlines())


# -------------------------------------------------------------------- show


def test_show_a_fork_and_a_rewound_run(daemon: Daemon) -> None:
    root = init(daemon, id="root", config={"lr": 3e-4, "opt": {"name": "adam"}})
    log_steps(root, range(100), val)
    root.finish()
    kid = init(daemon, id="kid", fork_from="root?_step=39", config={"lr": 1e-4}, tags=["a"])
    log_steps(kid, range(40, 45), lambda s: {"loss": 1 / 3, "s": s})
    kid.finish()
    again = init(daemon, id="root", resume_from="root?_step=49")
    log_steps(again, range(50, 60), val)
    again.finish()

    out = sl_proc("show", f"{P}/kid", "--socket", str(daemon.socket))
    assert out.returncode == 0 and out.stderr == ""
    f = pairs(out.stdout)
    assert f["run"] == [f"{P}/kid"] and f["state"] == ["finished"] and f["tags"] == ["a"]
    assert f["steps"] == ["last step 44, 5 rows of its own, earlier ones inherited up to step 39"]
    assert re.fullmatch(STAMP, f["created"][0]) and re.fullmatch(STAMP, f["updated"][0])
    assert f["parent"] == ["root @ step 39"]
    # kid was forked from the timeline the rewind then archived.
    assert f["lineage"] == ["root @39 (archived by rewind)"]
    assert "children" not in f and "rewound" not in f
    assert section(out.stdout, "config") == {"lr": "0.0001"}
    summary = section(out.stdout, "summary")
    assert summary["loss"] == "0.3333" and summary["s"] == "44" and summary["_step"] == "44"
    assert re.fullmatch(STAMP, summary["_timestamp"])

    out = sl_proc("show", f"{P}/root", "--socket", str(daemon.socket))
    assert out.returncode == 0 and out.stderr == ""
    f = pairs(out.stdout)
    assert f["parent"] == ["root @ step 49 (this run's timeline before a rewind)"]
    old = stepline.Api(socket=str(daemon.socket)).run(f"{P}/root").rewound_from
    assert old is not None
    (rewound,) = f["rewound"]
    assert re.fullmatch(
        rf"at step 49 on {STAMP}, replacing timeline {old.run_no} \(to step 99\)", rewound
    )
    assert section(out.stdout, "config") == {"lr": "0.0003", "opt.name": "adam"}
    assert section(out.stdout, "summary")["loss"] == f"{1 / 60:.4g}"

    # The parent's children, before any rewind of it.
    p2 = init(daemon, id="p2")
    p2.log({"a": 1}, step=3)
    p2.finish()
    for step in (1, 3):
        init(daemon, id=f"c{step}", fork_from=f"p2?_step={step}").finish()
    out = sl_proc("show", f"{P}/p2", "--socket", str(daemon.socket))
    assert pairs(out.stdout)["children"] == ["c1 @1 (finished)", "c3 @3 (finished)"]
    assert "parent" not in pairs(out.stdout)


# ----------------------------------------------------------------- history


def test_history_table(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    run = init(daemon, id="h")
    log_steps(run, range(12), rich)
    run.finish()

    code, out, err = sl(daemon, capsys, "history", f"{P}/h")
    assert code == 0 and err == ""
    header, *lines = out.splitlines()
    # Keys by name, as in CSV; wall-clock columns only when asked for.
    assert header.split() == ["_step", "flag", "late", "loss", "maybe", "mix", "n", "name", "odd"]
    assert len(lines) == 12
    # Numbers right-aligned: the last column (numeric) ends every line at one place.
    assert len({len(ln) for ln in [header, *lines]}) == 1
    cells = [re.split(r"\s{2,}", ln.strip()) for ln in lines]
    # Step 0 has no `late`: a blank cell (its None `maybe` shows as null); a
    # newline in a string never breaks the row.
    assert cells[0] == ["0", "true", "1", "null", "s0", "0", 'r,0\\n"q"', "NaN"]
    assert cells[2] == ["2", "true", "0.333333", "1", "s2", "2000006", 'r,2\\n"q"', "-Infinity"]
    assert [c[-1] for c in cells[:5]] == ["NaN", "Infinity", "-Infinity", "-0", "2.5"]
    assert cells[10] == [
        "10", "true", "2.5", "0.0909091", "5", "s10", "10000030", 'r,10\\n"q"', "NaN",
    ]  # fmt: skip

    code, out, _ = sl(daemon, capsys, "history", f"{P}/h", "--keys", "late,_timestamp")
    header, *lines = out.splitlines()
    assert header.split() == ["_step", "late", "_timestamp"]
    assert [ln.split()[0] for ln in lines] == [str(s) for s in range(10, 12)]
    assert all(re.search(STAMP + "$", ln) for ln in lines)


def test_history_csv_exact_values_specials_and_filters(daemon: Daemon) -> None:
    run = init(daemon, id="c")
    logged = log_steps(run, range(30), rich)
    run.finish()
    truth = list(stepline.Api(socket=str(daemon.socket)).run(f"{P}/c").scan_history())

    out = sl_proc("history", f"{P}/c", "--csv", "--socket", str(daemon.socket))
    assert out.returncode == 0 and out.stderr == ""
    header, *rows = list(csv.reader(io.StringIO(out.stdout)))
    want_cols = [
        "_step",
        "flag",
        "late",
        "loss",
        "maybe",
        "mix",
        "n",
        "name",
        "odd",
        "_runtime",
        "_timestamp",
    ]
    assert header == want_cols
    assert len(rows) == 30
    for row, want, real in zip(rows, logged, truth, strict=True):
        cells = dict(zip(header, row, strict=True))
        for k in want_cols:
            expect = real[k] if k in ("_runtime", "_timestamp") else want.get(k)
            assert same_cell(cells[k], expect), (k, cells[k], expect)
    assert rows[0][header.index("odd")] == "NaN" and rows[1][header.index("odd")] == "Infinity"
    assert rows[2][header.index("odd")] == "-Infinity" and rows[3][header.index("odd")] == "-0.0"
    assert rows[0][header.index("late")] == "" and rows[0][header.index("maybe")] == ""

    # --keys: W&B's rule (rows holding all of them), in the order given.
    out = sl_proc(
        "history", f"{P}/c", "--csv", "--keys", "late,loss", "--min-step", "12",
        "--max-step", "15", "--socket", str(daemon.socket),
    )  # fmt: skip
    assert out.stdout.splitlines() == ["_step,late,loss"] + [
        f"{s},{s * 0.25!r},{1.0 / (s + 1)!r}" for s in (12, 13, 14)
    ]

    # --samples: at most N rows, always the first and the last.
    out = sl_proc("history", f"{P}/c", "--csv", "--samples", "4", "--socket", str(daemon.socket))
    steps = [int(r[0]) for r in list(csv.reader(io.StringIO(out.stdout)))[1:]]
    assert len(steps) == 4 and steps[0] == 0 and steps[-1] == 29


def test_history_pages_through_a_fork_exactly(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "PAGE", 7)  # many pages, in both passes
    parent = init(daemon, id="par")
    logged = log_steps(parent, range(40), val)
    parent.finish()
    kid = init(daemon, id="kid", fork_from="par?_step=19")
    logged = logged[:20] + log_steps(kid, range(20, 45), lambda s: {"s": -s, "k": "x"})
    kid.finish()

    code, out, err = sl(daemon, capsys, "history", f"{P}/kid", "--csv")
    assert code == 0 and err == ""
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert header[:4] == ["_step", "k", "loss", "s"]
    got = [{k: v for k, v in zip(header[:4], r[:4], strict=True) if v} for r in rows]
    assert got == [
        {k: repr(v) if type(v) is float else str(v) for k, v in r.items()} for r in logged
    ]

    code, out, _ = sl(daemon, capsys, "history", f"{P}/kid", "--min-step", "18")
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == [str(s) for s in range(18, 45)]


def test_history_into_a_closed_pipe_stops_quietly(daemon: Daemon) -> None:
    run = init(daemon, id="long")
    log_steps(run, range(5000), val)
    run.finish()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stepline.cli",
            "history",
            f"{P}/long",
            "--socket",
            str(daemon.socket),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().split() == [b"_step", b"loss", b"s"]
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(60) == 1
    assert proc.stderr.read() == b""


def test_history_of_an_empty_range(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    run = init(daemon, id="e")
    log_steps(run, range(3), val)
    run.finish()
    code, out, err = sl(daemon, capsys, "history", f"{P}/e", "--min-step", "10")
    assert (code, out, err) == (0, "", f"stepline: no rows in {P}/e in steps [10, end)\n")
    code, out, err = sl(daemon, capsys, "history", f"{P}/e", "--keys", "zz")
    assert (code, out, err) == (0, "", f"stepline: no rows in {P}/e holding zz\n")
    code, out, err = sl(daemon, capsys, "history", f"{P}/e", "--min-step", "10", "--csv")
    assert (code, out, err) == (0, "_step\n", "")


# -------------------------------------------------------------------- tree


def test_tree_of_a_fork_of_a_fork_and_a_rewind(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    root = init(daemon, id="root")
    log_steps(root, range(100), val)
    root.finish()
    child = init(daemon, id="child", fork_from="root?_step=39")
    log_steps(child, range(40, 60), val)
    child.finish()
    grand = init(daemon, id="grand", fork_from="child?_step=49")
    log_steps(grand, range(50, 55), val)
    grand.finish()
    init(daemon, id="early", fork_from="root?_step=10").finish()  # made last, listed first
    again = init(daemon, id="root", resume_from="root?_step=49")
    log_steps(again, range(50, 52), val)  # left running
    again.flush()

    code, out, err = sl(daemon, capsys, "tree", f"{P}/grand")
    assert code == 0 and err == ""
    assert out == (
        "root (archived by rewind, last step 99)\n"
        "├── early @10 (finished, last step 10)\n"
        "├── child @39 (finished, last step 59)\n"
        "│   └── grand @49 (finished, last step 54) *\n"
        "└── root @49 (running, last step 51)\n"
    )
    again.finish()
    out = sl_proc("tree", f"{P}/root", "--socket", str(daemon.socket))
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.splitlines()[0] == "root (archived by rewind, last step 99)"
    assert out.stdout.splitlines()[-1] == "└── root @49 (finished, last step 51) *"

    lone = init(daemon, id="lone")
    lone.finish()
    _, out, _ = sl(daemon, capsys, "tree", f"{P}/lone")
    assert out == "lone (finished, no steps) *\n"


# ------------------------------------------------------------------ export


def exported_run(d: Daemon) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A fork whose view spans parent and own rows: (rows as logged, rows as read)."""
    parent = init(d, id="par")
    logged = log_steps(parent, range(30), rich)
    parent.finish()
    kid = init(d, id="kid", fork_from="par?_step=19")
    logged = logged[:20] + log_steps(kid, range(20, 35), lambda s: {**rich(s), "kid": s})
    kid.finish()
    truth = list(stepline.Api(socket=str(d.socket)).run(f"{P}/kid").scan_history())
    return logged, truth


COLUMNS = [
    "_step",
    "flag",
    "kid",
    "late",
    "loss",
    "maybe",
    "mix",
    "n",
    "name",
    "odd",
    "_runtime",
    "_timestamp",
]


def test_export_csv_reads_back_exactly(
    daemon: Daemon,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    logged, truth = exported_run(daemon)
    monkeypatch.chdir(tmp_path)
    code, out, err = sl(daemon, capsys, "export", f"{P}/kid", "--format", "csv")
    assert (code, out, err) == (0, "", "")  # no progress when stderr is not a terminal
    assert sorted(os.listdir(tmp_path)) == ["kid.csv"]
    with open(tmp_path / "kid.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == COLUMNS
    assert len(rows) == 35
    for row, want, real in zip(rows, logged, truth, strict=True):
        cells = dict(zip(header, row, strict=True))
        for k in COLUMNS:
            expect = real[k] if k in ("_runtime", "_timestamp") else want.get(k)
            assert same_cell(cells[k], expect), (want["_step"], k, cells[k], expect)

    # -o -: the same bytes on stdout.
    code, out, err = sl(daemon, capsys, "export", f"{P}/kid", "-o", "-")
    assert code == 0 and err == ""
    assert out == (tmp_path / "kid.csv").read_text()


def test_export_parquet_reads_back_exactly(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    logged, truth = exported_run(daemon)
    dest = tmp_path / "out.parquet"
    code, _, err = sl(daemon, capsys, "export", f"{P}/kid", "--format", "parquet", "-o", str(dest))
    assert code == 0 and err == ""
    table = pq.read_table(dest)
    assert table.column_names == COLUMNS
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types == {
        "_step": pa.int64(),
        "flag": pa.bool_(),
        "kid": pa.int64(),
        "late": pa.float64(),
        "loss": pa.float64(),
        "maybe": pa.float64(),
        "mix": pa.string(),  # ints and strings: the CSV text of each
        "n": pa.int64(),
        "name": pa.string(),
        "odd": pa.float64(),
        "_runtime": pa.float64(),
        "_timestamp": pa.float64(),
    }
    got = table.to_pylist()
    assert len(got) == 35
    for row, want, real in zip(got, logged, truth, strict=True):
        for k in COLUMNS:
            expect = real[k] if k in ("_runtime", "_timestamp") else want.get(k)
            if k == "mix":
                expect = str(expect)
            if type(expect) is float:
                assert bits(row[k]) == bits(expect) or (math.isnan(row[k]) and math.isnan(expect))
            else:
                assert row[k] == expect and type(row[k]) is type(expect), (k, row[k], expect)


def test_export_of_a_live_run_is_one_snapshot(
    daemon: Daemon,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with init(daemon, id="live") as run:
        log_steps(run, range(10), val)
        run.flush()
        survey = history._survey

        def then_more(*args: Any) -> Any:
            found = survey(*args)
            # Between the passes the run goes on, with a key the first pass never saw.
            log_steps(run, range(10, 20), lambda s: {**val(s), "new": s})
            run.flush()
            return found

        monkeypatch.setattr(history, "_survey", then_more)
        code, _, err = sl(daemon, capsys, "export", f"{P}/live", "-o", str(tmp_path / "x.csv"))
    assert code == 0 and err == ""
    header, *rows = list(csv.reader((tmp_path / "x.csv").open(newline="")))
    assert header == ["_step", "loss", "s", "_runtime", "_timestamp"]
    assert [int(r[0]) for r in rows] == list(range(10))


def test_export_parquet_without_pyarrow_says_how_to_get_it(
    daemon: Daemon,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    init(daemon, id="x").finish()
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.chdir(tmp_path)
    code, out, err = sl(daemon, capsys, "export", f"{P}/x", "--format", "parquet")
    assert (code, out) == (1, "")
    assert err == "stepline: export --format parquet needs pyarrow: pip install pyarrow\n"
    assert os.listdir(tmp_path) == []


def test_export_progress_is_one_line_on_a_terminal(daemon: Daemon, tmp_path: Path) -> None:
    run = init(daemon, id="big")
    log_steps(run, range(3000), val)
    run.finish()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stepline.cli",
            "export",
            f"{P}/big",
            "--socket",
            str(daemon.socket),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=tmp_path,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(60) == 0
    text = b"".join(chunks).decode().replace("\x1b[K", "")  # erase-to-end-of-line
    assert "Traceback" not in text
    # Redrawn in place with \r; one newline at the very end.
    assert text.rstrip("\r\n").count("\n") == 0
    assert text.rstrip("\r\n").endswith("exported 3000/3000 rows to big.csv")
    assert text.startswith("\r")
    assert len((tmp_path / "big.csv").read_text().splitlines()) == 3001


def test_export_to_an_unwritable_place(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    init(daemon, id="x").finish()
    dest = tmp_path / "no" / "such" / "dir.csv"
    code, out, err = sl(daemon, capsys, "export", f"{P}/x", "-o", str(dest))
    assert (code, out) == (1, "")
    assert err.startswith(f"stepline: cannot write {dest}: ") and err.count("\n") == 1
    assert not dest.parent.exists()


def test_export_bad_arguments_exit_2(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--format", "xlsx"], ["--format", "parquet", "-o", "-"]):
        with pytest.raises(SystemExit) as e:
            sl(daemon, capsys, "export", f"{P}/x", *args)
        assert e.value.code == 2


# ------------------------------------------------------------------ errors


def test_unknown_run_is_one_line_and_exit_1(daemon: Daemon, tmp_path: Path) -> None:
    init(daemon, id="x").finish()
    for cmd in ("show", "history", "tree", "export"):
        out = sl_proc(cmd, f"{P}/nope", "--socket", str(daemon.socket), cwd=tmp_path)
        assert out.returncode == 1, (cmd, out.stderr)
        assert out.stdout == ""
        assert out.stderr == f"stepline: run 'nope' does not exist in project '{P}'\n", cmd
    assert os.listdir(tmp_path) == []
    out = sl_proc("show", "ghost/x", "--socket", str(daemon.socket))
    assert (out.returncode, out.stderr) == (
        1,
        "stepline: run 'x' does not exist in project 'ghost'\n",
    )


def test_no_daemon_names_the_socket_and_how_to_start_one(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(short_tmp)
    sock = short_tmp / "none.sock"
    for args in (["runs"], ["runs", "-p", P], ["show", f"{P}/x"], ["history", f"{P}/x", "--csv"]):
        # The default socket comes from the env; --timeout is how long it retries.
        out = sl_proc(*args, "--timeout", "0.3", STEPLINE_SOCKET=str(sock))
        assert out.returncode == 1, args
        assert out.stdout == ""
        lines = out.stderr.splitlines()
        assert len(lines) == 1, out.stderr
        assert str(sock) in lines[0] and "`stepline daemon`" in lines[0]
        assert "retried for 0.3s" in lines[0]
    for args in (["tree", f"{P}/x"], ["export", f"{P}/x"]):
        assert cli.main([*args, "--socket", str(sock), "--timeout", "0.1"]) == 1
    assert os.listdir(short_tmp) == []


def test_bad_arguments_exit_2(daemon: Daemon) -> None:
    for args in (
        ["show", "no-slash"],
        ["show", "a/b/c"],
        ["history", f"{P}/x", "--samples", "1"],
        ["history", f"{P}/x", "--keys", ","],
        ["history", f"{P}/x", "--min-step", "-1"],
        ["tree"],
        ["runs", "--bogus"],
    ):
        out = sl_proc(*args, "--socket", str(daemon.socket))
        assert out.returncode == 2, (args, out.stderr)
        assert "usage: stepline" in out.stderr and "Traceback" not in out.stderr


def test_usage_lists_the_read_commands() -> None:
    out = sl_proc("--help")
    assert out.returncode == 0
    for cmd in ("runs", "show", "history", "tree", "export"):
        assert re.search(rf"^  {cmd}\s", out.stdout, re.M), cmd
