"""Crashes: the daemon SIGKILLed in a loop under four writers, clients SIGKILLed
mid-batch, and copies of a store taken while it is written.

Every fault point is drawn from a seeded RNG (``STEPLINE_GAUNTLET_SEED``, else
a fixed seed); the plan is printed, so a failure shows how to replay it.
The sleeps here are those fault points, never waits: waits are on conditions.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stepline
from tests.conftest import Daemon, wait_for
from tests.gauntlet.conftest import Record, scale

P = "crashes"
HERE = Path(__file__).parent
SEED = int(os.environ.get("STEPLINE_GAUNTLET_SEED", "20261126"))
FINAL_TIMEOUT = 180.0  # for a writer to deliver everything it logged, after the last fault
WRITERS = 4
RATE = 4000  # rows a second per writer: steady traffic, far below what the daemon takes


# ------------------------------------------------------------------ helpers


def check_store(
    data_dir: Path, quick: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``stepline check`` on ``data_dir``, as its own process (a broken copy may
    crash LMDB itself)."""
    return subprocess.run(
        [sys.executable, "-m", "stepline_daemon.check", "--data-dir", str(data_dir)]
        + (["--quick"] if quick else []),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_consistent(data_dir: Path, why: str, quick: bool = False) -> None:
    done = check_store(data_dir, quick)
    assert done.returncode == 0, f"stepline check failed {why}:\n{done.stdout}{done.stderr}"


def complete_lines(path: Path) -> list[str]:
    """The lines a live process has finished writing to ``path``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text[: text.rfind("\n") + 1].splitlines()


def client_env(root: Path) -> dict[str, str]:
    # Any spool file goes under the test's directory, never the user's state dir.
    return {**os.environ, "XDG_STATE_HOME": str(root / "state")}


class LibraryWriter:
    """``crash_client.py``: a process logging ``{"i": i, "x": i / 7}`` at step i
    through the real client, reporting the last step it saw acknowledged."""

    def __init__(self, root: Path, socket: Path, run_id: str, rate: int) -> None:
        self.run_id = run_id
        self.work = root / run_id
        self.work.mkdir(parents=True)
        with (self.work / "out").open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "crash_client.py"),
                    *(str(socket), P, run_id, str(self.work), str(rate)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=client_env(root),
            )

    def acked(self) -> int:
        """The last step this writer knows is durable; -1 before the first."""
        lines = complete_lines(self.work / "acked")
        return int(lines[-1]) if lines else -1

    def output(self) -> str:
        return f"writer {self.run_id} said:\n" + (self.work / "out").read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        (self.work / "stop").touch()

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the writer to flush, finish and exit; what it logged."""
        code = self.proc.wait(timeout)
        assert code == 0, f"exit {code}; {self.output()}"
        out: dict[str, Any] = json.loads((self.work / "result.json").read_text())
        return out

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait(10)


@dataclass
class Audit:
    """What the store holds of one library writer's run, against what it logged."""

    stored: int  # rows stored
    prefix: int  # rows stored as 0..prefix-1 with exact values, in order
    duplicates: int  # rows stored beyond one per logged step
    lost: int  # rows the writer saw acknowledged that the store lacks


def audit(rows: list[dict[str, Any]], acked: int) -> Audit:
    seen = Counter(r.get("i") for r in rows)
    prefix = 0
    for i, r in enumerate(rows):
        if r.get("_step") != i or r.get("i") != i or r.get("x") != i / 7:
            break
        prefix = i + 1
    lost = sum(1 for i in range(acked + 1) if seen[i] == 0)
    return Audit(len(rows), prefix, sum(n - 1 for n in seen.values() if n > 1), lost)


def history(api: stepline.Api, run_id: str) -> list[dict[str, Any]]:
    return list(api.run(f"{P}/{run_id}").scan_history(page_size=10_000))


def state_of(api: stepline.Api, run_id: str) -> str:
    return str(api.run(f"{P}/{run_id}").state)


@contextlib.contextmanager
def writing(short_tmp: Path, n: int) -> Iterator[tuple[Daemon, list[LibraryWriter]]]:
    """A daemon and ``n`` library writers logging to it, each its own run; all
    killed on the way out (a test ends them first with :func:`finish_writers`)."""
    d = Daemon(short_tmp / "live").start()
    writers: list[LibraryWriter] = []
    try:
        writers += [LibraryWriter(short_tmp, d.socket, f"w{k}", RATE) for k in range(n)]
        wait_for(lambda: min(w.acked() for w in writers) >= 0, 60, "every writer's first ack")
        yield d, writers
    finally:
        for w in writers:
            w.kill()
        if d.alive:
            d.kill()


def finish_writers(
    d: Daemon, writers: list[LibraryWriter], acked: dict[str, int] | None = None, why: str = ""
) -> dict[str, Audit]:
    """Stop the writers and the daemon. Asserts that the store holds every row each
    writer logged once, in order, exact (so every row in ``acked`` too), that the
    runs are finished, and that the store passes ``stepline check``."""
    for w in writers:
        w.stop()
    results = {w.run_id: w.result(FINAL_TIMEOUT) for w in writers}
    audits: dict[str, Audit] = {}
    with stepline.Api(socket=str(d.socket)) as api:
        for w in writers:
            logged, errors = results[w.run_id]["logged"], results[w.run_id]["errors"]
            assert errors == [], f"{w.run_id}: the daemon refused batches: {errors} ({why})"
            last = (acked or {}).get(w.run_id, -1)
            a = audits[w.run_id] = audit(history(api, w.run_id), last)
            assert a.lost == 0, f"{w.run_id}: acknowledged up to {last}, {a} ({why})"
            assert a.duplicates == 0, f"{w.run_id}: {a} ({why})"
            # The stronger promise: every row logged is stored once, in order, exact.
            assert a.prefix == a.stored == logged, f"{w.run_id}: logged {logged}, {a} ({why})"
            assert state_of(api, w.run_id) == "finished", why
    assert d.stop() == 0, d.log()
    assert_consistent(d.data_dir, f"at the end ({why})")
    assert "Traceback" not in d.log(), d.log()
    return audits


# --------------------------------------------------------- the crash loop

MAX_DELAY = 1.0  # most seconds between rows flowing again and the next kill
EARLY = 0.25  # share of kills that land right after a restart, while clients reconnect


def test_daemon_sigkilled_in_a_loop_under_four_writers(short_tmp: Path, record: Record) -> None:
    kills = scale(5, 100)
    rng = random.Random(SEED)
    # (early, delay): an early kill comes `delay` after the daemon serves, before
    # rows need to flow; the others `delay` after the rows flow again.
    plan = [
        (early, rng.uniform(0, 0.1) if early else rng.uniform(0, MAX_DELAY))
        for early in (n > 0 and rng.random() < EARLY for n in range(kills))
    ]
    print(f"seed {SEED}; kill plan (early, delay): {plan}")
    recoveries: list[float] = []
    began = time.monotonic()
    with writing(short_tmp, WRITERS) as (d, writers):
        restarted: float | None = None
        for n, (early, delay) in enumerate(plan):
            if restarted is not None and not early:
                recoveries.append(await_rows(d, restarted, f"after kill {n} (seed {SEED})"))
            time.sleep(delay)  # the fault injection: a random point in the stream
            d.kill()
            for w in writers:
                assert w.alive, w.output()
            # Right after SIGKILL, before any restart repairs anything.
            assert_consistent(d.data_dir, f"after kill {n + 1} (seed {SEED})", quick=True)
            restarted = time.monotonic()
            d.start()
        assert restarted is not None
        recoveries.append(await_rows(d, restarted, f"after the last kill (seed {SEED})"))
        elapsed = time.monotonic() - began
        acked = {w.run_id: w.acked() for w in writers}
        audits = finish_writers(d, writers, acked, f"seed {SEED}")

    early_kills = sum(early for early, _ in plan)
    record(
        faults=kills,
        acknowledged=sum(acked[w] + 1 for w in acked),
        lost=sum(a.lost for a in audits.values()),
        duplicates=sum(a.duplicates for a in audits.values()),
        recovery_s=round(max(recoveries), 3),
        notes=(
            f"daemon SIGKILLed {kills} times in {elapsed:.0f} s under {WRITERS} writers "
            f"({RATE:,} rows/s each), {early_kills} of them while clients reconnected; "
            f"every one of {sum(a.stored for a in audits.values()):,} rows logged stored "
            "once; runs finished; stepline check passes after every kill; "
            f"recovery = restart until rows commit again (median "
            f"{sorted(recoveries)[len(recoveries) // 2]:.2f} s)"
        ),
    )


def await_rows(d: Daemon, restarted: float, what: str) -> float:
    """Wait until the restarted daemon commits rows; seconds since the restart began."""
    with stepline.Api(socket=str(d.socket), timeout=10) as api:
        wait_for(lambda: api.status()["rows"] > 0, 60, f"rows to flow again {what}")
    return time.monotonic() - restarted


# ------------------------------------------------------ clients killed


RAW_ROWS = 500  # rows per raw batch
RAW_PAD = 200  # bytes of padding per row: a ~120 KB frame, so a kill lands mid-frame


def kill_raw_client(
    d: Daemon, root: Path, run_id: str, mode: str, half_at: int | None, delay: float
) -> tuple[int, float]:
    """Run ``crash_raw.py``, SIGKILL it, wait for its run to be crashed.

    Returns (batches acknowledged to it, seconds from the kill until crashed)."""
    out = root / f"{run_id}.out"
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_raw.py"), str(d.socket), P, run_id]
            + [str(RAW_ROWS), str(RAW_PAD), mode]
            + ([str(half_at)] if half_at is not None else []),
            stdin=subprocess.PIPE,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = "half" if mode == "half" else "run"
        wait_for(
            lambda: any(line.startswith(ready) for line in complete_lines(out)),
            30,
            f"{run_id} to say {ready!r}",
        )
        if mode == "stream":
            # Let it get well into sending before the random point.
            wait_for(lambda: "ack 1" in complete_lines(out), 30, f"{run_id}'s first ack")
            time.sleep(delay)  # the fault injection
        assert proc.poll() is None, out.read_text()
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdin is not None:
            proc.stdin.close()
    killed = time.monotonic()
    with stepline.Api(socket=str(d.socket)) as api:
        wait_for(lambda: state_of(api, run_id) == "crashed", 30, f"{run_id} to be crashed")
    took = time.monotonic() - killed
    lines = complete_lines(out)
    assert not [line for line in lines if line.startswith("unexpected")], lines
    acks = [int(line.split()[1]) for line in lines if line.startswith("ack ")]
    assert acks == list(range(1, len(acks) + 1)), f"{run_id}: acks out of order: {acks}"
    return len(acks), took


def test_clients_sigkilled_mid_batch_leave_crashed_runs_and_whole_batches(
    daemon: Daemon, short_tmp: Path, record: Record
) -> None:
    rng = random.Random(SEED + 1)
    streams, halves, libs = scale(3, 20), scale(1, 5), scale(2, 10)
    plan = [("stream", None, rng.uniform(0, 0.5)) for _ in range(streams)]
    plan += [("half", rng.randrange(0, 4), 0.0) for _ in range(halves)]
    lib_delays = [rng.uniform(0.1, 1.0) for _ in range(libs)]
    print(f"seed {SEED}; raw kills (mode, half_at, delay): {plan}; library kills: {lib_delays}")
    api = stepline.Api(socket=str(daemon.socket))
    acknowledged = lost = duplicates = partial = beyond = 0
    recoveries: list[float] = []

    for n, (mode, half_at, delay) in enumerate(plan):
        run_id = f"raw{n}"
        acked, took = kill_raw_client(daemon, short_tmp, run_id, mode, half_at, delay)
        recoveries.append(took)
        rows = list(api.run(f"{P}/{run_id}").scan_history(keys=["b", "j"], page_size=10_000))
        per_batch = Counter(r["b"] for r in rows)
        what = f"{run_id} ({mode}, seed {SEED + 1}): rows per batch {dict(per_batch)}"
        # Whole batches only, in seq order, each row where its batch put it.
        assert all(r["_step"] == r["b"] * RAW_ROWS + r["j"] for r in rows), what
        partial += sum(1 for count in per_batch.values() if count != RAW_ROWS)
        duplicates += len(rows) - len({r["_step"] for r in rows})
        assert sorted(per_batch) == list(range(len(per_batch))), what
        assert all(count == RAW_ROWS for count in per_batch.values()), what
        lost += sum(RAW_ROWS - per_batch[b] for b in range(acked))
        assert len(per_batch) >= acked, f"{what}; {acked} batches were acknowledged"
        if mode == "half":
            # The half-sent batch is not stored; every acknowledged one is.
            assert len(per_batch) == acked == half_at, what
        beyond += len(per_batch) - acked
        acknowledged += acked * RAW_ROWS

    for n, delay in enumerate(lib_delays):
        w = LibraryWriter(short_tmp, daemon.socket, f"lib{n}", RATE)
        try:
            wait_for(lambda w=w: w.acked() >= 0, 30, f"{w.run_id}'s first ack")
            time.sleep(delay)  # the fault injection
            assert w.alive, w.output()
        finally:
            w.kill()
        killed = time.monotonic()
        wait_for(lambda w=w: state_of(api, w.run_id) == "crashed", 30, f"{w.run_id} crashed")
        recoveries.append(time.monotonic() - killed)
        acked = w.acked()
        a = audit(history(api, w.run_id), acked)
        # A gap-free prefix of what it logged, holding every row it saw acknowledged.
        what = f"{w.run_id} (seed {SEED + 1}): acked {acked}, {a}"
        assert a.prefix == a.stored > acked, what
        assert a.lost == a.duplicates == 0, what
        acknowledged += acked + 1
        lost += a.lost
        duplicates += a.duplicates
    api.close()
    assert_consistent(daemon.data_dir, "after the client kills")

    record(
        faults=streams + halves + libs,
        acknowledged=acknowledged,
        lost=lost,
        duplicates=duplicates,
        recovery_s=round(max(recoveries), 3),
        notes=(
            f"SIGKILLed {streams} raw clients sending {RAW_ROWS}-row batches at random moments, "
            f"{halves} mid-frame by construction, {libs} library clients; every run crashed; "
            f"partial batches stored: {partial}; {beyond} whole batches stored past the last ack "
            "read; recovery = kill until the run reads crashed"
        ),
    )


# ------------------------------------------------ copies of a live store


def copy_plan(rng: random.Random, n: int) -> list[float]:
    plan = [rng.uniform(0.1, 0.6) for _ in range(n)]
    print(f"seed {SEED}; copy delays: {plan}")
    return plan


def open_copy(root: Path, acked: dict[str, int]) -> tuple[float, dict[str, Audit]]:
    """Serve the copy in ``root/data`` with a daemon of its own; audit its runs
    against what was acknowledged before the copy began. (seconds to serve, audits)"""
    c = Daemon(root)
    c.http = "off"
    began = time.monotonic()
    c.start()
    served = time.monotonic() - began
    try:
        with stepline.Api(socket=str(c.socket)) as api:
            audits = {run_id: audit(history(api, run_id), last) for run_id, last in acked.items()}
            # Their client was not there: the daemon marked the runs crashed.
            assert {state_of(api, run_id) for run_id in acked} == {"crashed"}
    finally:
        assert c.stop() == 0, c.log()
    return served, audits


def test_copy_under_a_read_transaction_is_consistent(short_tmp: Path, record: Record) -> None:
    copies = scale(2, 10)
    delays = copy_plan(random.Random(SEED + 2), copies)
    lost, duplicates, opened = 0, 0, []
    with writing(short_tmp, 2) as (d, writers):
        for n, delay in enumerate(delays):
            time.sleep(delay)  # a random point mid-write
            acked = {w.run_id: w.acked() for w in writers}  # before the copy starts
            root = short_tmp / f"copy{n}"
            subprocess.run(
                [sys.executable, str(HERE / "crash_copy.py"), str(d.data_dir), str(root / "data")],
                check=True,
                timeout=120,
            )
            assert_consistent(root / "data", f"on copy {n} (seed {SEED + 2})")
            served, audits = open_copy(root, acked)
            assert_consistent(root / "data", f"on copy {n} after a daemon served it")
            for run_id, a in audits.items():
                what = f"copy {n}, {run_id}: acked {acked[run_id]}, {a} (seed {SEED + 2})"
                assert a.prefix == a.stored > acked[run_id], what
                assert a.lost == a.duplicates == 0, what
                lost += a.lost
                duplicates += a.duplicates
            opened.append(served)
            shutil.rmtree(root)
        stored = sum(a.stored for a in finish_writers(d, writers).values())
    record(
        faults=copies,
        acknowledged=sum(last + 1 for last in acked.values()),  # before the last copy
        lost=lost,
        duplicates=duplicates,
        recovery_s=round(max(opened), 3),
        notes=(
            f"{copies} copies of data.mdb under a reader's transaction while 2 writers "
            f"logged ({stored:,} rows): all pass stepline check and hold every row "
            "acknowledged before the copy began; recovery = a daemon on the copy serving"
        ),
    )


def classify_plain_copy(root: Path, acked: dict[str, int]) -> str:
    """What became of one plain copy: checked, then served if it passed."""
    try:
        done = check_store(root / "data", timeout=60)
    except subprocess.TimeoutExpired:
        return "check hung"
    if done.returncode == 2:
        code = re.search(r"MDB_[A-Z_]+", done.stderr)
        return f"did not open ({code.group() if code else done.stderr.strip()[-80:]})"
    if done.returncode == 1:
        return "opened, failed check"
    if done.returncode != 0:
        return f"check died of signal {-done.returncode}"
    try:
        _, audits = open_copy(root, acked)
    except (RuntimeError, AssertionError, OSError, stepline.Error) as exc:
        print(f"{root.name} passed check but did not serve: {exc}")
        return "passed check, did not serve"
    if all(a.lost == a.duplicates == 0 and a.prefix == a.stored for a in audits.values()):
        return "passed check, held every acked row"
    return "passed check, lacked acked rows"


def test_plain_copy_of_a_live_store_is_not_guaranteed(short_tmp: Path, record: Record) -> None:
    """A plain file copy mid-write, no reader: LMDB may reuse freed pages while it
    copies, so nothing is promised of the copy. Only the live store's integrity
    is asserted; the copies' fate is recorded."""
    copies = scale(5, 50)
    delays = copy_plan(random.Random(SEED + 3), copies)
    outcomes: Counter[str] = Counter()
    with writing(short_tmp, WRITERS) as (d, writers):
        for n, delay in enumerate(delays):
            time.sleep(delay)  # a random point mid-write
            acked = {w.run_id: w.acked() for w in writers}
            root = short_tmp / f"copy{n}"
            (root / "data").mkdir(parents=True)
            shutil.copyfile(d.data_dir / "data.mdb", root / "data" / "data.mdb")
            outcomes[classify_plain_copy(root, acked)] += 1
            shutil.rmtree(root)
        stored = sum(a.stored for a in finish_writers(d, writers).values())
    print(f"plain copies: {dict(outcomes)}")
    record(
        faults=copies,
        acknowledged=sum(last + 1 for last in acked.values()),
        lost=None,
        duplicates=None,
        recovery_s=None,
        notes=(
            f"{copies} plain copies of data.mdb (no reader) while {WRITERS} writers logged "
            f"({stored:,} rows): "
            + ", ".join(f"{k}: {v}" for k, v in outcomes.most_common())
            + ". Nothing is promised of such a copy (use stepline backup); "
            "asserted: the live store stayed whole"
        ),
    )
