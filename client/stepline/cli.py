"""The ``stepline`` command."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from stepline.api import Api, ApiRun
    from stepline.export import Columns
    from stepline.progress import Progress

USAGE = """usage: stepline COMMAND [ARGS]

commands:
  daemon    run the daemon in the foreground (stepline daemon --help)
  sync      deliver runs recorded with mode="offline" (stepline sync [--socket P] [FILE...])
  runs      list the projects, or a project's runs (stepline runs [--project P])
  show      one run: state, lineage, rewinds, config, summary (stepline show PROJECT/RUN_ID)
  history   a run's rows as a table or CSV (stepline history PROJECT/RUN_ID [--csv] ...)
  tree      the fork tree a run belongs to (stepline tree PROJECT/RUN_ID)
  export    a run's whole history to a file (stepline export PROJECT/RUN_ID --format csv|parquet)
  status    report the running daemon; exit 1 when none answers (stepline status [--json])
  delete    delete a run; rows stay while forks read them (stepline delete PROJECT/RUN_ID [--purge])
  purge     remove the rows of deleted runs nothing reads any more (stepline purge)
  backup    a consistent, compacted copy of the store, taken live (stepline backup DEST)
  check     verify a store's files; exit 1 on a problem (stepline check [--data-dir DIR])
  systemd   write the systemd units (stepline systemd install [--user])

Every command but daemon takes --socket PATH (default: $STEPLINE_SOCKET, else
$XDG_RUNTIME_DIR/stepline.sock). COMMAND --help shows its options.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "daemon":
        try:
            from stepline_daemon.main import main as daemon_main
        except ImportError as exc:
            print(
                f"stepline daemon needs the daemon extra: pip install 'stepline[daemon]' ({exc})",
                file=sys.stderr,
            )
            return 1
        return daemon_main(rest)
    if cmd == "sync":
        return _sync(rest)
    if cmd in READS:
        return _read(READS[cmd], rest)
    from stepline import admin

    if cmd in admin.COMMANDS:
        return _read(admin.COMMANDS[cmd], rest)
    print(f"stepline: unknown command {cmd!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


def _sync(argv: list[str]) -> int:
    import argparse

    from stepline import offline, paths
    from stepline.errors import Error
    from stepline.settings import ClientSettings

    ap = argparse.ArgumentParser(prog="stepline sync", description="Deliver offline runs.")
    ap.add_argument("--socket", help="daemon socket (env STEPLINE_SOCKET; default XDG)")
    ap.add_argument("files", nargs="*", type=Path, help="offline run files (default: all pending)")
    args = ap.parse_args(argv)
    settings = ClientSettings.from_env()
    files = args.files or offline.pending(settings)
    socket = paths.resolve_socket(args.socket)
    failed = 0
    for f in files:
        try:
            run_id, batches = offline.sync_file(f, socket)
        except (Error, OSError) as exc:
            print(f"{f.name}: not synced: {exc}", file=sys.stderr)
            failed += 1
            continue
        done = f.parent / "synced"
        done.mkdir(exist_ok=True)
        f.rename(done / f.name)  # kept: a later sync of it again is harmless
        print(f"{f.name}: run {run_id}, {batches} batches delivered")
    if not files:
        print("nothing to sync")
    return 1 if failed else 0


# ------------------------------------------------------------- read commands

PAGE = 10_000  # rows per scan page for history and export
# Seconds a command waits for the daemon, retrying while it is away (a restart).
TIMEOUT = 30.0
HISTORY_DIGITS = 6  # significant digits of floats in history tables (summary: 4)


def _read(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a read command; a stepline error is one line on stderr and exit 1."""
    from stepline.errors import Error

    try:
        return command(argv)
    except Error as exc:
        print(f"stepline: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        if _reader_gone():
            # `| head` stopped reading: stop quietly, and keep Python from
            # complaining again when it flushes stdout at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        print("stepline: the connection to the daemon broke", file=sys.stderr)
        return 1
    except OSError as exc:  # a connection the daemon dropped mid-request
        print(f"stepline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstepline: interrupted", file=sys.stderr)
        return 130


def _reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (not the daemon's socket)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):  # no file descriptor (captured output)
        return False


def _fail(message: str) -> int:
    print(f"stepline: {message}", file=sys.stderr)
    return 1


def _parser(command: str, description: str, timeout: float = TIMEOUT) -> argparse.ArgumentParser:
    import argparse

    ap = argparse.ArgumentParser(prog=f"stepline {command}", description=description)
    ap.add_argument("--socket", help="daemon socket (env STEPLINE_SOCKET; default XDG)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="SECONDS",
        help="how long to wait for the daemon's answer, retrying while it restarts "
        f"(default {timeout:g})",
    )
    return ap


def _add_run(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "run", metavar="PROJECT/RUN_ID", type=_run_path, help="the run, as in Api.run()"
    )


def _run_path(text: str) -> str:
    import argparse

    project, _, run_id = text.partition("/")
    if not project or not run_id or "/" in run_id:
        raise argparse.ArgumentTypeError(f"expected PROJECT/RUN_ID, got {text!r}")
    return text


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _key_list(text: str) -> list[str]:
    import argparse

    keys = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not keys:
        raise argparse.ArgumentTypeError("expected comma-separated keys, e.g. loss,acc")
    return keys


def _width() -> int | None:
    """The terminal's width when printing to one (or COLUMNS is set); else no limit."""
    import shutil

    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _api(args: argparse.Namespace) -> Api:
    from stepline.api import Api

    return Api(socket=args.socket, timeout=args.timeout)


def _print(lines: Iterable[str]) -> None:
    write = sys.stdout.write
    for line in lines:
        write(line + "\n")


# -------------------------------------------------------------------- runs


def _runs(argv: list[str]) -> int:
    ap = _parser("runs", "List the projects (with run counts), or the runs of one project.")
    ap.add_argument("--project", "-p", help="list this project's runs")
    args = ap.parse_args(argv)
    api = _api(args)
    try:
        if args.project is None:
            return _project_table(api)
        return _run_table(api, args.project)
    finally:
        api.close()


def _project_table(api: Api) -> int:
    from stepline import tables

    rows = [[p["name"], str(p["runs"]), tables.timestamp(p["updated"])] for p in api.project_list()]
    if not rows:
        print("no projects yet", file=sys.stderr)
        return 0
    header = ["PROJECT", "RUNS", "UPDATED"]
    _print(tables.table(rows, header, _width(), right={1}, flexible={0}))
    return 0


def _run_table(api: Api, project: str) -> int:
    from stepline import tables

    runs = sorted(api.runs(project), key=lambda r: (r._full("created"), r.id))
    if not runs:
        return _fail(f"no project {project!r} (`stepline runs` lists them)")
    named = any(r.name != r.id for r in runs)
    header = ["ID", *(["NAME"] if named else []), "STATE", "STEP", "PARENT"]
    header += ["CREATED", "UPDATED", "TAGS"]
    rows = []
    for r in runs:
        parent = r.parent
        if parent is None:
            origin = ""
        elif parent[0] == r.id:
            origin = f"rewound @{parent[1]}"
        else:
            origin = f"{parent[0]} @{parent[1]}"
        rows.append(
            [
                r.id,
                *([tables.printable(r.name)] if named else []),
                r.state,
                str(r.last_step) if r.last_step >= 0 else "-",
                origin,
                tables.timestamp(r._full("created")),
                tables.timestamp(r._full("updated")),
                tables.printable(", ".join(r.tags)),
            ]
        )
    flexible = {header.index(h) for h in ("NAME", "PARENT", "TAGS") if h in header}
    _print(tables.table(rows, header, _width(), right={header.index("STEP")}, flexible=flexible))
    return 0


# -------------------------------------------------------------------- show


def _show(argv: list[str]) -> int:
    ap = _parser("show", "One run: state, steps, times, lineage, rewinds, config, summary.")
    _add_run(ap)
    args = ap.parse_args(argv)
    api = _api(args)
    try:
        run = api.run(args.run)
        fields = _fields(run)
        config, summary = run.config, run.summary
    finally:
        api.close()
    from stepline import tables

    width = _width()
    out = tables.pairs(fields, width)
    for title, items in (("config", _config_items(config)), ("summary", _summary_items(summary))):
        out += ["", title]
        out += tables.pairs(items, width, indent="  ") if items else ["  (none)"]
    _print(out)
    return 0


def _fields(run: ApiRun) -> list[tuple[str, str]]:
    """The ``key  value`` lines about ``run``; a blank key continues the one above."""
    from stepline.tables import printable, timestamp

    state = run.state
    code = run._full("exit_code")
    if code not in (None, 0):
        state += f" (exit code {code})"
    steps = "no steps" if run.last_step < 0 else f"last step {run.last_step}"
    own = run._full("rows")
    rows = f"{own} row" if own == 1 else f"{own} rows"
    parent = run.parent
    if parent is not None:
        rows += f" of its own, earlier ones inherited up to step {parent[1]}"
    out = [("run", f"{run.project}/{run.id}")]
    if run.name != run.id:
        out.append(("name", printable(run.name)))
    out += [
        ("state", state),
        ("steps", f"{steps}, {rows}"),
        ("created", timestamp(run._full("created"))),
        ("updated", timestamp(run._full("updated"))),
    ]
    if run.dropped:
        out.append(("dropped", f"{run.dropped} rows (logged at a step already passed)"))
    if run.tags:
        out.append(("tags", printable(", ".join(run.tags))))
    if parent is not None:
        rewind = " (this run's timeline before a rewind)" if parent[0] == run.id else ""
        out.append(("parent", f"{parent[0]} @ step {parent[1]}{rewind}"))
    out += _listed("lineage", [_link(a) for a in run._full("lineage")])
    out += _listed("children", [_link(c) for c in run._full("children")])
    out += _listed("rewound", list(_rewinds(run)))
    return out


def _link(d: dict[str, Any]) -> str:
    state = "archived by rewind" if d["state"] == "archived" else d["state"]
    return f"{d['id']} @{d['step']} ({state})"


def _listed(key: str, items: list[str]) -> list[tuple[str, str]]:
    return [(key if i == 0 else "", item) for i, item in enumerate(items)]


def _rewinds(run: ApiRun) -> Iterator[str]:
    """The timelines rewinds replaced, newest first, each readable by its number."""
    from stepline.tables import timestamp

    current = run
    while (old := current.rewound_from) is not None:
        at = current.parent[1] if current.parent else "?"
        when = timestamp(current._full("created"))
        yield f"at step {at} on {when}, replacing timeline {old.run_no} (to step {old.last_step})"
        current = old


def _flat(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _config_items(config: dict[str, Any]) -> list[tuple[str, str]]:
    from stepline.tables import cell, printable

    return [(printable(k), cell(v, digits=None)) for k, v in _flat(config)]


def _summary_items(summary: dict[str, Any]) -> list[tuple[str, str]]:
    from stepline.tables import cell, printable, timestamp

    keys = sorted(summary, key=lambda k: (k.startswith("_"), k))
    out = []
    for k in keys:
        v = summary[k]
        if k == "_timestamp" and isinstance(v, (int, float)):
            out.append((k, timestamp(v)))
        else:
            out.append((printable(k), cell(v)))
    return out


# ----------------------------------------------------------------- history


def _history(argv: list[str]) -> int:
    ap = _parser(
        "history",
        "A run's history, fork-resolved: every row (streamed), or --samples of them.",
    )
    _add_run(ap)
    ap.add_argument("--keys", type=_key_list, help="k1,k2: only rows holding all of them (W&B)")
    ap.add_argument("--csv", action="store_true", help="CSV on stdout, values exact")
    ap.add_argument("--samples", type=_at_least(2), help="at most N evenly spaced rows")
    ap.add_argument("--min-step", type=_at_least(0), default=0, help="first step (inclusive)")
    ap.add_argument("--max-step", type=_at_least(0), help="last step (exclusive, as scan_history)")
    args = ap.parse_args(argv)
    api = _api(args)
    try:
        run = api.run(args.run)
        if args.samples is not None:
            rows: list[dict[str, Any]] = run.history(
                keys=args.keys,
                samples=args.samples,
                min_step=args.min_step,
                max_step=args.max_step,
                pandas=False,
            )

            def source(bound: int | None) -> Iterable[dict[str, Any]]:
                return rows

        else:

            def source(bound: int | None) -> Iterable[dict[str, Any]]:
                return run.scan_history(
                    keys=args.keys, page_size=PAGE, min_step=args.min_step, max_step=bound
                )

        if args.csv:
            return _history_csv(source, args.max_step, args.keys)
        empty = f"no rows in {args.run}"
        if args.keys:
            empty += f" holding {','.join(args.keys)}"
        if args.min_step or args.max_step is not None:
            empty += (
                f" in steps [{args.min_step}, {'end' if args.max_step is None else args.max_step})"
            )
        return _history_table(source, args.max_step, args.keys, empty)
    finally:
        api.close()


Source = Callable[[int | None], Iterable[dict[str, Any]]]


def _survey(rows: Iterable[dict[str, Any]], progress: Progress) -> tuple[Columns, int | None]:
    """A first pass: the columns, and the step to stop the second pass at."""
    from stepline.export import Columns

    columns = Columns()
    last = None
    for row in progress.count(rows, lambda n: f"reading {n} rows"):
        columns.add(row)
        last = row["_step"]
    return columns, None if last is None else last + 1


def _bound(stop: int | None, max_step: int | None) -> int | None:
    return stop if max_step is None or stop is None else min(stop, max_step)


def _history_csv(source: Source, max_step: int | None, keys: list[str] | None) -> int:
    from stepline.export import STEP, write_csv
    from stepline.progress import Progress

    progress = Progress(None if sys.stdout.isatty() else sys.stderr)
    total = ""
    if keys is not None:
        # The columns are known: one pass.
        columns, bound = [STEP, *(k for k in keys if k != STEP)], max_step
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
    from stepline import tables
    from stepline.export import STEP, Columns
    from stepline.progress import Progress
    from stepline.rows import RESERVED_KEYS

    def cell(value: Any, key: str) -> str:
        if key == "_timestamp" and type(value) is float:
            return tables.timestamp(value)
        return tables.cell(value, HISTORY_DIGITS)

    progress = Progress(sys.stderr)
    columns = Columns()
    natural: dict[str, int] = {}
    stop = None
    for row in progress.count(source(max_step), lambda n: f"reading {n} rows"):
        columns.add(row)
        for k, v in row.items():
            w = tables.display_width(cell(v, k))
            if w > natural.get(k, 0):
                natural[k] = w
        stop = row["_step"] + 1
    progress.done()
    if stop is None:
        print(f"stepline: {empty}", file=sys.stderr)
        return 0
    if keys is not None:
        names = [STEP, *(k for k in keys if k != STEP)]
    else:  # wall-clock columns only when asked for by name
        names = [k for k in columns.names if k not in RESERVED_KEYS]
    numeric = {i for i, k in enumerate(names) if columns.numeric(k)}
    layout = tables.Layout(
        [tables.printable(k) for k in names],
        right=numeric,
        natural=[natural.get(k, 0) for k in names],
        flexible=set(range(len(names))) - numeric,  # strings give way before numbers
    )
    layout.fit(_width())
    rows = source(_bound(stop, max_step))
    _print(layout.lines([cell(row[k], k) if k in row else "" for k in names] for row in rows))
    return 0


# -------------------------------------------------------------------- tree


def _tree(argv: list[str]) -> int:
    ap = _parser(
        "tree",
        "The fork tree a run belongs to, from its root ancestor down; "
        "the run asked for is marked *, each branch shows its fork step.",
    )
    _add_run(ap)
    args = ap.parse_args(argv)
    from stepline import tables, tree

    api = _api(args)
    try:
        run = api.run(args.run)
        root = tree.build(api, run)
    finally:
        api.close()
    width = _width()
    lines = tree.draw(root, mark=run.run_no)
    _print(lines if width is None else (tables.cut(line, width) for line in lines))
    return 0


# ------------------------------------------------------------------ export


def _export(argv: list[str]) -> int:
    ap = _parser(
        "export",
        "A run's whole history, fork-resolved, to a file: `_step` and a column per key.",
    )
    _add_run(ap)
    ap.add_argument("--format", choices=("csv", "parquet"), default="csv", help="default csv")
    ap.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="default RUN_ID.csv or RUN_ID.parquet here; - for stdout (csv)",
    )
    args = ap.parse_args(argv)
    if args.format == "parquet":
        if args.output == "-":
            ap.error("parquet cannot go to stdout; name a file with -o")
        try:
            import pyarrow.parquet  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            return _fail("export --format parquet needs pyarrow: pip install pyarrow")
    from stepline.errors import Error
    from stepline.progress import Progress

    to_stdout = args.output == "-"
    progress = Progress(None if to_stdout and sys.stdout.isatty() else sys.stderr)
    api = _api(args)
    try:
        run = api.run(args.run)
        # Pass 1 finds every key (keys can first appear late in a run) and the
        # row count; pass 2 writes, bounded at pass 1's last step, so both
        # passes see the same rows even while the run is still logging.
        columns, stop = _survey(run.scan_history(page_size=PAGE), progress)
        total = columns.rows
        rows: Iterable[dict[str, Any]] = ()
        if stop is not None:
            rows = run.scan_history(page_size=PAGE, max_step=stop)
        rows = progress.count(rows, lambda n: f"exported {n}/{total} rows")
        if to_stdout:
            from stepline.export import write_csv

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
            return _fail(f"cannot write {dest}: {exc.strerror or exc}")
    finally:
        api.close()
    progress.done(f"exported {n}/{total} rows to {dest}")
    return 0


def _write_file(dest: Path, fmt: str, columns: Columns, rows: Iterable[dict[str, Any]]) -> int:
    """Write to ``dest.partial``, then rename: ``dest`` is whole or untouched."""
    from stepline import export

    partial = dest.with_name(dest.name + ".partial")
    try:
        if fmt == "csv":
            with partial.open("w", newline="", encoding="utf-8") as f:
                n = export.write_csv(f, columns.names, rows)
        else:
            n = export.write_parquet(partial, columns, rows)
        os.replace(partial, dest)
        return n
    finally:
        partial.unlink(missing_ok=True)


READS: dict[str, Callable[[list[str]], int]] = {
    "runs": _runs,
    "show": _show,
    "history": _history,
    "tree": _tree,
    "export": _export,
}


if __name__ == "__main__":
    sys.exit(main())
