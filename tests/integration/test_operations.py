"""Operating the daemon: status, Prometheus metrics, peer credentials."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

import stepline
from stepline import protocol
from tests.conftest import Daemon
from tests.wire import greeted, read_replies


def _metrics(daemon: Daemon) -> dict[str, float]:
    with urllib.request.urlopen(daemon.http_url + "/metrics", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_status_reports_the_running_daemon(daemon: Daemon) -> None:
    run = stepline.init(project="ops", id="r", socket=str(daemon.socket))
    for i in range(250):
        run.log({"x": i})
    run.finish()
    api = stepline.Api(socket=str(daemon.socket))
    status = api.status()
    api.close()
    assert status["pid"] == daemon.pid
    assert status["version"] == stepline.__version__
    assert status["socket"] == str(daemon.socket)
    assert status["http"] == daemon.http_url
    assert status["rows"] == 250
    assert status["writer_healthy"] is True
    assert status["uptime"] >= 0
    assert status["read_workers"] in (0, 2)  # 2 once those started at start-up are up


def test_metrics_count_rows_batches_commits_and_errors(daemon: Daemon) -> None:
    before = _metrics(daemon)
    assert before["stepline_rows_total"] == 0
    run = stepline.init(project="ops", id="m", socket=str(daemon.socket))
    for i in range(1000):
        run.log({"x": i})
    run.finish()
    # A refused batch: a step that goes backwards, sent raw.
    s = greeted(daemon, "raw-ops")
    s.sendall(protocol.encode({"op": "init", "project": "ops", "id": "bad", "rid": 1}))
    run_no = read_replies(s, 1)[0]["result"]["run_no"]
    s.sendall(
        protocol.encode(
            {"op": "log", "run_no": run_no, "seq": 1, "rows": [[5, {"x": 1}], [4, {"x": 2}]]}
        )
    )
    reply = read_replies(s, 1)[0]
    assert reply["op"] == "error" and reply["code"] == "step_order", reply
    s.close()
    after = _metrics(daemon)
    assert after["stepline_rows_total"] == 1000
    assert after["stepline_batches_total"] >= 3  # at least a log batch, config/finish
    assert after["stepline_commit_seconds_count"] >= 1
    assert (
        after['stepline_commit_seconds_bucket{le="+Inf"}'] == after["stepline_commit_seconds_count"]
    )
    assert after['stepline_errors_total{code="step_order"}'] == 1
    assert after["stepline_writer_healthy"] == 1
    assert after["stepline_clients"] >= 1
    assert after["stepline_lmdb_used_bytes"] <= after["stepline_lmdb_map_bytes"]
    buckets = [v for k, v in after.items() if k.startswith("stepline_commit_seconds_bucket")]
    assert buckets == sorted(buckets), "histogram buckets are cumulative"


def test_each_run_records_the_peer_credentials(daemon: Daemon) -> None:
    run = stepline.init(project="ops", id="who", socket=str(daemon.socket))
    run.log({"x": 1})
    run.finish()
    api = stepline.Api(socket=str(daemon.socket))
    peer = api.run("ops/who")._full("peer")
    api.close()
    assert peer == {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def test_a_client_cannot_claim_someone_elses_credentials(daemon: Daemon) -> None:
    s = greeted(daemon, "liar")
    forged = {"uid": 0, "gid": 0, "pid": 1, "host": "elsewhere"}
    s.sendall(
        protocol.encode({"op": "init", "project": "ops", "id": "forged", "peer": forged, "rid": 1})
    )
    assert read_replies(s, 1)[0]["op"] == "ok"
    s.close()
    api = stepline.Api(socket=str(daemon.socket))
    peer = api.run("ops/forged")._full("peer")
    api.close()
    real = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    assert peer == {**real, "host": socket.gethostname()}, "the kernel's word, not the forgery"


def test_json_logs_and_journal_by_default_under_systemd(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Daemon(short_tmp / "j")
    d.args = ("--log-format", "json")
    d.start()
    assert d.stop() == 0
    events = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    assert any(e["msg"] == "stopped cleanly" and e["level"] == "info" for e in events)

    d = Daemon(short_tmp / "k")
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")  # what systemd sets for a journald stdout
    d.start()
    assert d.stop() == 0
    assert "<6>stepline.daemon: stopped cleanly" in d.log().splitlines()
