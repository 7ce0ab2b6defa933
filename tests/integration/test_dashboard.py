"""The dashboard in a real headless Chromium, against the real daemon's HTTP side.

Debian's chromium, driven by Playwright's sync API (Playwright never downloads a
browser of its own here): `make test` installs both. The page exposes
``window.__charts`` (metric -> uPlot instance) and ``<body data-view data-state>``,
which the tests read instead of pixels. Any console error or uncaught page
error fails the test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

import stepline
from tests.conftest import Daemon

CHROMIUM = Path("/usr/bin/chromium")
VENDORED = Path(__file__).parents[2] / "daemon/stepline_daemon/static/vendor/uPlot.iife.min.js"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000  # every Playwright wait: a condition, with this deadline
P = "proj"

# One series of one chart, found by label: its first and last step, its point
# count, its gaps, its values, the steps it marks (a fork or rewind point), its dash.
SERIES_JS = """([metric, label]) => {
    const u = window.__charts[metric];
    const i = u.series.findIndex((s) => s.label === label);
    if (i < 0) return null;
    const xs = u.data[0], ys = u.data[i];
    const marked = u.series[i].points.filter(u, i) ?? [];
    let first = null, last = null, n = 0;
    const values = [], gaps = [];
    for (let k = 0; k < xs.length; k++) {
        if (ys[k] === null) gaps.push(xs[k]);  // undefined: no row there; null: a gap
        if (ys[k] === null || ys[k] === undefined) continue;
        if (first === null) first = xs[k];
        last = xs[k];
        n++;
        values.push(ys[k]);
    }
    return {first, last, n, gaps, values, marker: marked.map((k) => xs[k]), dash: u.series[i].dash ?? null};
}"""


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium")
    if not VENDORED.is_file():
        pytest.fail(
            f"{VENDORED.name} is missing: run `make test` (or `make assets`), which fetches it"
        )
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, daemon: Daemon) -> Iterator[Page]:
    """A fresh page on the daemon's dashboard; fails the test on any console error."""
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, base_url=daemon.http_url
    )
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(f"console: {msg.text} at {msg.location}")

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    yield pg
    context.close()
    assert not errors, "\n".join(errors)


def init(d: Daemon, **kw: Any) -> stepline.Run:
    return stepline.init(project=P, socket=str(d.socket), **kw)


def row(step: int, scale: float = 1.0) -> dict[str, Any]:
    loss = math.nan if step == 50 else scale * 2.0 / math.sqrt(step + 1)
    return {"loss": loss, "acc": 1 - 1 / (step + 2)}


def open_view(page: Page, fragment: str, view: str) -> None:
    page.goto(f"/{fragment}")
    wait_ready(page, view)


def wait_ready(page: Page, view: str) -> None:
    """Wait until ``view`` finished loading for the hash the page shows now: after a
    click, the hash changes before the router runs, so the body may still say
    ``ready`` for the page before."""
    page.wait_for_function(
        """(view) => {
            const b = document.body.dataset;
            return b.view === view && b.state === "ready"
                && b.route === (location.hash.replace(/^#/, "") || "/");
        }""",
        arg=view,
    )


def series(page: Page, metric: str, label: str) -> dict[str, Any]:
    """First and last step and point count of a series (the rest is in ``series_full``)."""
    full = series_full(page, metric, label)
    return {k: full[k] for k in ("first", "last", "n")}


def series_full(page: Page, metric: str, label: str) -> dict[str, Any]:
    result: dict[str, Any] | None = page.evaluate(SERIES_JS, [metric, label])
    assert result is not None, f"no series {label!r} on the {metric} chart"
    return result


def labels(page: Page, metric: str) -> list[str]:
    result: list[str] = page.evaluate(
        "(m) => window.__charts[m].series.slice(1).map((s) => s.label)", metric
    )
    return result


@pytest.fixture
def family(daemon: Daemon) -> Iterator[stepline.Run]:
    """``base`` (300 steps, NaN at 50, tagged), ``kid`` forked at 100 and still running
    (to step 199), ``rw`` rewound at 80; yields ``kid``, finished at teardown."""
    base = init(daemon, id="base", tags=["baseline"], config={"lr": 3e-4})
    for s in range(300):
        base.log(row(s))
    base.finish()
    rw = init(daemon, id="rw", tags=["rewind"])
    for s in range(150):
        rw.log(row(s, 1.5))
    rw.finish()
    rw = init(daemon, id="rw", resume_from="rw?_step=80")
    for s in range(81, 120):
        rw.log(row(s, 0.5), step=s, commit=True)
    rw.finish()
    kid = init(daemon, id="kid", fork_from="base?_step=100", tags=["sweep"], config={"lr": 1e-4})
    for s in range(101, 200):
        kid.log(row(s, 0.7))
    kid.flush()
    yield kid
    kid.finish()


# ------------------------------------------------------------------ tests


def test_run_page_draws_fork_over_parent_live_with_controls(
    page: Page, family: stepline.Run, tmp_path: Path
) -> None:
    open_view(page, f"#/p/{P}/r/kid", "run")
    assert page.locator("h1.run-title").inner_text().startswith("kid")
    assert sorted(page.evaluate("Object.keys(window.__charts)")) == ["acc", "loss"]
    assert labels(page, "loss") == ["base", "kid"]
    # The parent in full; the child from the fork step, with a marker there.
    base = series_full(page, "loss", "base")
    assert (base["first"], base["last"], base["n"]) == (0, 299, 299)
    assert base["gaps"] == [50]  # the API's bare NaN, parsed, drawn as a gap
    assert base["marker"] == []
    assert series(page, "acc", "base") == {"first": 0, "last": 299, "n": 300}
    kid = series_full(page, "loss", "kid")
    assert (kid["first"], kid["last"], kid["n"]) == (100, 199, 100)
    assert kid["marker"] == [100]
    assert kid["values"][0] == pytest.approx(2.0 / math.sqrt(101))  # the parent's row at the fork

    # Live: rows the run logs while the page is open reach the chart; a metric
    # first logged now gets a chart of its own.
    for s in range(200, 260):
        family.log({**row(s, 0.7), **({"grad_norm": s / 100} if s >= 250 else {})})
    family.flush()
    page.wait_for_function(f"() => ({SERIES_JS})(['loss', 'kid']).last === 259")
    assert series(page, "loss", "kid") == {"first": 100, "last": 259, "n": 160}
    page.wait_for_function(
        f"() => window.__charts.grad_norm && ({SERIES_JS})(['grad_norm', 'kid']).last === 259"
    )
    assert series(page, "grad_norm", "kid") == {"first": 250, "last": 259, "n": 10}
    assert series(page, "loss", "kid") == {"first": 100, "last": 259, "n": 160}
    family.finish()
    page.wait_for_selector(".page-head [data-role=state]:text-is('finished')")

    # Smoothing changes the drawn values; 0 gives the raw ones back.
    raw = series_full(page, "loss", "kid")["values"]
    values_js = f"() => ({SERIES_JS})(['loss', 'kid']).values"
    page.locator("input[name=smoothing]").fill("0.9")
    page.wait_for_function(
        f"(raw) => {{ const ys = ({values_js})();"
        " return ys.length === raw.length && ys.some((v, i) => Math.abs(v - raw[i]) > 1e-9); }",
        arg=raw,
    )
    smooth = series_full(page, "loss", "kid")["values"]
    assert smooth[0] == pytest.approx(raw[0])  # debiased: the first point is the raw one
    assert max(smooth) - min(smooth) < max(raw) - min(raw)
    page.locator("input[name=smoothing]").fill("0")
    page.wait_for_function(
        f"(raw) => JSON.stringify(({values_js})()) === JSON.stringify(raw)", arg=raw
    )
    # Log scale: the charts are remade with a log y scale, and back.
    page.locator("input[name=log]").check()
    page.wait_for_function(
        "() => window.__charts.loss && window.__charts.loss.scales.y.distr === 3"
    )
    assert series(page, "loss", "kid") == {"first": 100, "last": 259, "n": 160}
    page.locator("input[name=log]").uncheck()
    page.wait_for_function(
        "() => window.__charts.loss && window.__charts.loss.scales.y.distr === 1"
    )

    shot = tmp_path / "run.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0


def test_fork_tree_opens_run_pages(page: Page, family: stepline.Run) -> None:
    open_view(page, f"#/p/{P}/tree/kid", "tree")
    nodes = page.locator(".tree a.node")
    assert sorted(nodes.evaluate_all("(ns) => ns.map((n) => n.dataset.runId)")) == ["base", "kid"]
    page.locator(".tree a.node[data-run-id=base]").click()
    page.wait_for_url(f"**/#/p/{P}/r/base")
    wait_ready(page, "run")
    assert page.locator("h1.run-title").inner_text().startswith("base")
    assert labels(page, "loss") == ["base"]
    # The run page's lineage tree leads to the child.
    page.locator(".side a.node[data-run-id=kid]").click()
    page.wait_for_url(f"**/#/p/{P}/r/kid")
    wait_ready(page, "run")
    assert labels(page, "loss") == ["base", "kid"]


def test_rewound_run_shows_its_archived_timeline_dashed(page: Page, family: stepline.Run) -> None:
    open_view(page, f"#/p/{P}/r/rw", "run")
    assert labels(page, "loss") == ["rw (archived)", "rw"]
    assert series_full(page, "loss", "rw")["dash"] is None
    assert series_full(page, "loss", "rw (archived)")["dash"] == [6, 4]
    assert series_full(page, "loss", "rw (archived)")["marker"] == [80]
    assert series(page, "loss", "rw") == {"first": 0, "last": 119, "n": 119}
    assert series(page, "loss", "rw (archived)") == {"first": 80, "last": 149, "n": 70}
    # The archived timeline is a page of its own, reached from the lineage tree.
    page.locator(".side a.node.archived[data-run-id=rw]").click()
    wait_ready(page, "run")
    assert "run_no=" in page.url
    assert page.locator(".notice").is_visible()
    assert labels(page, "loss") == ["rw (archived)"]


def test_runs_table_filters_sorts_and_compares(page: Page, family: stepline.Run) -> None:
    open_view(page, f"#/p/{P}", "runs")

    def shown() -> list[str]:
        ids: list[str] = page.locator("table.runs tbody tr[data-run-id]").evaluate_all(
            "(rows) => rows.map((r) => r.dataset.runId)"
        )
        return ids

    assert sorted(shown()) == ["base", "kid", "rw"]
    page.locator("th[data-key=id]").click()
    assert shown() == ["base", "kid", "rw"]
    page.locator("th[data-key=id]").click()
    assert shown() == ["rw", "kid", "base"]
    page.locator("select[name=tag]").select_option("sweep")
    assert shown() == ["kid"]
    page.locator("select[name=tag]").select_option("")
    page.locator("select[name=state]").select_option("running")
    assert shown() == ["kid"]
    page.locator("select[name=state]").select_option("")
    page.locator("input[name=q]").fill("ba")
    assert shown() == ["base"]
    page.locator("input[name=q]").fill("")

    page.locator("tr[data-run-id=base] input[type=checkbox]").check()
    page.locator("tr[data-run-id=kid] input[type=checkbox]").check()
    page.locator("button.primary").click()
    page.wait_for_url(f"**/#/p/{P}/compare?runs=*")
    wait_ready(page, "compare")
    assert sorted(labels(page, "loss")) == ["base", "kid"]
    # The fork starts at its fork point, its parent being in the comparison.
    assert series(page, "loss", "kid") == {"first": 100, "last": 199, "n": 100}
    assert series(page, "acc", "base") == {"first": 0, "last": 299, "n": 300}


def test_json_with_bare_nan_and_infinity(page: Page, family: stepline.Run) -> None:
    open_view(page, "#/", "projects")
    assert page.locator("table.projects a").all_inner_texts() == [P]
    # Tokens inside strings (escaped quotes and backslashes too) stay text; keys too.
    text = '{"a": "NaN \\" Infinity \\\\", "b": [NaN, -Infinity, Infinity, -1.5e3], "NaN": null}'
    out = page.evaluate(
        "(t) => { const v = window.__stepline.parseJSON(t);"
        " return [v.a, v.b.map(String), Object.keys(v)]; }",
        text,
    )
    assert out == [
        'NaN " Infinity \\',
        ["NaN", "-Infinity", "Infinity", "-1500"],
        ["a", "b", "NaN"],
    ]


def test_unknown_page_says_so(page: Page, daemon: Daemon) -> None:
    page.goto("/#/nowhere")
    page.wait_for_selector("body[data-state=error] .error-box")
    assert "no page at #/nowhere" in page.locator(".error-box").inner_text()
