"""``stepline history`` and ``export``: a run's rows, fork-resolved, as a table or a file."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stepline import tables
from stepline.api import ApiRun
from stepline.commands import Command
from stepline.commands.common import (
    add_run,
    at_least,
    fail,
    guarded,
    key_list,
    open_api,
    parser,
    print_lines,
    width,
)
from stepline.errors import Error
from stepline.export import STEP, Columns, write_csv, write_parquet
from stepline.progress import Progress
from stepline.rows import RESERVED_KEYS

PAGE = 10_000  # rows per scan page for history and export
HISTORY_DIGITS = 6  # significant digits of floats in history tables (summary: 4)

Source = Callable[[int | None], Iterable[dict[str, Any]]]
"""A run's rows up to a step bound (exclusive; None: to the end), read anew each call."""


# ----------------------------------------------------------------- history


def history(argv: list[str]) -> int:
    args = _history_parser().parse_args(argv)
    api = open_api(args)
    try:
        source = _source(api.run(args.run), args)
        if args.csv:
            return _history_csv(source, args.max_step, args.keys)
        return _history_table(source, args.max_step, args.keys, _empty_message(args))
    finally:
        api.close()


def _history_parser() -> argparse.ArgumentParser:
    ap = parser(
        "history",
        "A run's history, fork-resolved: every row (streamed), or --samples of them.",
        reads=True,
    )
    add_run(ap)
    ap.add_argument("--keys", type=key_list, help="k1,k2: only rows holding all of them (W&B)")
    ap.add_argument("--csv", action="store_true", help="CSV on stdout, values exact")
    ap.add_argument("--samples", type=at_least(2), help="at most N evenly spaced rows")
    ap.add_argument("--min-step", type=at_least(0), default=0, help="first step (inclusive)")
    ap.add_argument("--max-step", type=at_least(0), help="last step (exclusive, as scan_history)")
    return ap


def _source(run: ApiRun, args: argparse.Namespace) -> Source:
    """The rows asked for: every one in the step range, or --samples of them."""
    if args.samples is None:

        def scan(bound: int | None) -> Iterable[dict[str, Any]]:
            return run.scan_history(
                keys=args.keys, page_size=PAGE, min_step=args.min_step, max_step=bound
            )

        return scan
    # The daemon picks the samples once; both passes print those same rows.
    rows: list[dict[str, Any]] = run.history(
        keys=args.keys,
        samples=args.samples,
        min_step=args.min_step,
        max_step=args.max_step,
        pandas=False,
    )

    def sampled(bound: int | None) -> Iterable[dict[str, Any]]:
        return rows

    return sampled


def _empty_message(args: argparse.Namespace) -> str:
    empty = f"no rows in {args.run}"
    if args.keys:
        empty += f" holding {','.join(args.keys)}"
    if args.min_step or args.max_step is not None:
        empty += f" in steps [{args.min_step}, {'end' if args.max_step is None else args.max_step})"
    return empty


def _survey(rows: Iterable[dict[str, Any]], progress: Progress) -> tuple[Columns, int | None]:
    """A first pass: the columns, and the step to stop the second pass at."""
    columns = Columns()
    last = None
    for row in progress.count(rows, lambda n: f"reading {n} rows"):
        columns.add(row)
        last = row["_step"]
    return columns, None if last is None else last + 1


def _bound(stop: int | None, max_step: int | None) -> int | None:
    return stop if max_step is None or stop is None else min(stop, max_step)


def _named(keys: list[str]) -> list[str]:
    """The columns of rows filtered by ``keys``: ``_step`` first, then the keys as given."""
    return [STEP, *(k for k in keys if k != STEP)]


def _history_csv(source: Source, max_step: int | None, keys: list[str] | None) -> int:
    progress = Progress(None if sys.stdout.isatty() else sys.stderr)
    total = ""
    if keys is not None:
        # The columns are known: one pass.
        columns, bound = _named(keys), max_step
    else:
        survey, stop = _survey(source(max_step), progress)
        columns, bound, total = survey.names, _bound(stop, max_step), f"/{survey.rows}"
        if stop is None:
            source = _nothing
    rows = progress.count(source(bound), lambda n: f"wrote {n}{total} rows")
    n = write_csv(sys.stdout, columns, rows)
    progress.done(f"wrote {n}{total} rows")
    return 0


def _nothing(bound: int | None) -> Iterable[dict[str, Any]]:
    return ()


def _history_table(source: Source, max_step: int | None, keys: list[str] | None, empty: str) -> int:
    """Pass 1 measures every cell (and finds the keys), pass 2 prints aligned rows."""
    columns, natural, stop = _measure(source(max_step))
    if stop is None:
        print(f"stepline: {empty}", file=sys.stderr)
        return 0
    if keys is not None:
        names = _named(keys)
    else:  # wall-clock columns only when asked for by name
        names = [k for k in columns.names if k not in RESERVED_KEYS]
    layout = _layout(names, columns, natural)
    layout.fit(width())
    rows = source(_bound(stop, max_step))
    print_lines(layout.lines([_cell(row[k], k) if k in row else "" for k in names] for row in rows))
    return 0


def _cell(value: Any, key: str) -> str:
    if key == "_timestamp" and type(value) is float:
        return tables.timestamp(value)
    return tables.cell(value, HISTORY_DIGITS)


def _measure(rows: Iterable[dict[str, Any]]) -> tuple[Columns, dict[str, int], int | None]:
    """Pass 1: the columns, each key's widest cell, and the step to stop pass 2 at."""
    progress = Progress(sys.stderr)
    columns = Columns()
    natural: dict[str, int] = {}
    stop = None
    for row in progress.count(rows, lambda n: f"reading {n} rows"):
        columns.add(row)
        for k, v in row.items():
            w = tables.display_width(_cell(v, k))
            if w > natural.get(k, 0):
                natural[k] = w
        stop = row["_step"] + 1
    progress.done()
    return columns, natural, stop


def _layout(names: list[str], columns: Columns, natural: dict[str, int]) -> tables.Layout:
    numeric = {i for i, k in enumerate(names) if columns.numeric(k)}
    return tables.Layout(
        [tables.printable(k) for k in names],
        right=numeric,
        natural=[natural.get(k, 0) for k in names],
        flexible=set(range(len(names))) - numeric,  # strings give way before numbers
    )


# ------------------------------------------------------------------ export


def export(argv: list[str]) -> int:
    ap = _export_parser()
    args = ap.parse_args(argv)
    if args.format == "parquet":
        if args.output == "-":
            ap.error("parquet cannot go to stdout; name a file with -o")
        if not _have_pyarrow():
            return fail("export --format parquet needs pyarrow: pip install pyarrow")
    to_stdout = args.output == "-"
    progress = Progress(None if to_stdout and sys.stdout.isatty() else sys.stderr)
    api = open_api(args)
    try:
        run = api.run(args.run)
        columns, rows = _snapshot(run, progress)
        total = columns.rows
        if to_stdout:
            n = write_csv(sys.stdout, columns.names, rows)
            progress.done(f"exported {n}/{total} rows")
            return 0
        dest = Path(args.output or f"{run.id}.{args.format}")
        try:
            n = _write_file(dest, args.format, columns, rows)
        except Error:
            raise  # the daemon's (DaemonUnavailable is an OSError too)
        except OSError as exc:
            progress.done()
            return fail(f"cannot write {dest}: {exc.strerror or exc}")
    finally:
        api.close()
    progress.done(f"exported {n}/{total} rows to {dest}")
    return 0


def _export_parser() -> argparse.ArgumentParser:
    ap = parser(
        "export",
        "A run's whole history, fork-resolved, to a file: `_step` and a column per key.",
        reads=True,
    )
    add_run(ap)
    ap.add_argument("--format", choices=("csv", "parquet"), default="csv", help="default csv")
    ap.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="default RUN_ID.csv or RUN_ID.parquet here; - for stdout (csv)",
    )
    return ap


def _have_pyarrow() -> bool:
    try:
        # Imported here, not above: pyarrow is optional and slow to import, and
        # only parquet needs it. Checked before any row is read.
        import pyarrow.parquet  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def _snapshot(run: ApiRun, progress: Progress) -> tuple[Columns, Iterable[dict[str, Any]]]:
    """The columns of every row ``run`` holds now, and those rows, counted on ``progress``."""
    # Pass 1 finds every key (keys can first appear late in a run) and the
    # row count; pass 2 writes, bounded at pass 1's last step, so both
    # passes see the same rows even while the run is still logging.
    columns, stop = _survey(run.scan_history(page_size=PAGE), progress)
    total = columns.rows
    rows: Iterable[dict[str, Any]] = ()
    if stop is not None:
        rows = run.scan_history(page_size=PAGE, max_step=stop)
    return columns, progress.count(rows, lambda n: f"exported {n}/{total} rows")


def _write_file(dest: Path, fmt: str, columns: Columns, rows: Iterable[dict[str, Any]]) -> int:
    """Write to ``dest.partial``, then rename: ``dest`` is whole or untouched."""
    partial = dest.with_name(dest.name + ".partial")
    try:
        if fmt == "csv":
            with partial.open("w", newline="", encoding="utf-8") as f:
                n = write_csv(f, columns.names, rows)
        else:
            n = write_parquet(partial, columns, rows)
        os.replace(partial, dest)
        return n
    finally:
        partial.unlink(missing_ok=True)


COMMANDS: dict[str, Command] = {
    "history": guarded(history),
    "export": guarded(export),
}
