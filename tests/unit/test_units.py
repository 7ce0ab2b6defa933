"""``stepline systemd install``: rendering, quoting, where the units go, what it says.

systemd itself reads the units in tests/integration/test_systemd.py.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from stepline import units

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    """An executable file to name as --bin."""
    p = tmp_path / "bin" / "stepline"
    p.parent.mkdir()
    p.write_text("#!/bin/sh\n")
    p.chmod(0o755)
    return p


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_repo_units_are_the_rendered_templates(user: bool) -> None:
    # systemd/ is generated from units.py; the two must not drift apart.
    where = REPO / "systemd" / ("user" if user else "")
    rendered = units.render([units.DEFAULT_BIN], user)
    on_disk = {p.name: p.read_text() for p in where.glob("stepline.*")}
    assert on_disk == rendered, (
        "systemd/ differs from client/stepline/units.py; regenerate with: stepline systemd "
        f"install {'--user ' if user else ''}--dir {where.relative_to(REPO)} --bin {units.DEFAULT_BIN}"
    )


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_render_fills_every_placeholder(user: bool) -> None:
    out = units.render(["/opt/stepline/bin/stepline"], user)
    assert set(out) == {"stepline.socket", "stepline.service"}
    assert all(units.PLACEHOLDER not in text for text in out.values())
    assert "ExecStart=/opt/stepline/bin/stepline daemon " in out["stepline.service"]


def test_user_units_match_the_clients_defaults() -> None:
    # The client's default socket is $XDG_RUNTIME_DIR/stepline.sock (%t in user
    # mode) and an autostarted daemon's data dir ~/.local/share/stepline.
    out = units.render([units.DEFAULT_BIN], user=True)
    assert "ListenStream=%t/stepline.sock\n" in out["stepline.socket"]
    assert (
        "--data-dir %h/.local/share/stepline --socket %t/stepline.sock\n"
        in (out["stepline.service"])
    )
    assert "User=" not in out["stepline.service"]


def test_system_socket_is_the_one_the_service_names() -> None:
    out = units.render([units.DEFAULT_BIN], user=False)
    assert "ListenStream=%t/stepline/stepline.sock\n" in out["stepline.socket"]
    assert "--socket %t/stepline/stepline.sock\n" in out["stepline.service"]
    assert units.SYSTEM_SOCKET_PATH == "/run/stepline/stepline.sock"


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (["/usr/bin/stepline"], "/usr/bin/stepline"),
        (["/opt/venv/bin/python", "-m", "stepline.cli"], "/opt/venv/bin/python -m stepline.cli"),
        (["/opt/my env/stepline"], '"/opt/my env/stepline"'),
        (["/opt/100%/stepline"], '"/opt/100%%/stepline"'),
        # $ in the executable's path is not expanded, in arguments it is.
        (["/opt/$HOME/stepline"], '"/opt/$HOME/stepline"'),
        (["/usr/bin/x", "$HOME", "5%", 'a"b\\c'], '/usr/bin/x "$$HOME" "5%%" "a\\"b\\\\c"'),
    ],
)
def test_exec_line_quotes_what_systemd_would_split_or_expand(command: list[str], line: str) -> None:
    assert units.exec_line(command) == line


@pytest.mark.parametrize(
    "command",
    [[], ["stepline"], ["bin/stepline"], ["/opt/a\nb"], ['/opt/a"b/x'], ["/opt/a\\b/x"]],
)
def test_exec_line_refuses_what_cannot_be_an_exec_start(command: list[str]) -> None:
    with pytest.raises(ValueError):
        units.exec_line(command)


def test_install_writes_reports_and_is_idempotent(
    tmp_path: Path, exe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "units"
    assert units.main(["install", "--dir", str(dest), "--bin", str(exe)]) == 0
    out = capsys.readouterr().out
    for name in ("stepline.socket", "stepline.service"):
        path = dest / name
        assert f"wrote {path}" in out
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert path.read_text() == units.render([str(exe)], user=False)[name]
    assert "systemctl enable --now stepline.socket" in out
    assert "useradd --system" in out
    assert f"STEPLINE_SOCKET={units.SYSTEM_SOCKET_PATH}" in out
    assert f"copy them to {units.SYSTEM_DIR}" in out
    assert sorted(p.name for p in dest.iterdir()) == ["stepline.service", "stepline.socket"]

    assert units.main(["install", "--dir", str(dest), "--bin", str(exe)]) == 0
    assert capsys.readouterr().out.count("unchanged ") == 2

    (dest / "stepline.service").write_text("edited\n")
    assert units.main(["install", "--dir", str(dest), "--bin", str(exe)]) == 0
    out = capsys.readouterr().out
    assert f"updated {dest / 'stepline.service'}" in out
    assert f"unchanged {dest / 'stepline.socket'}" in out


def test_user_install_goes_to_the_xdg_config_dir(
    tmp_path: Path, exe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path / "home")}
    assert units.main(["install", "--user", "--bin", str(exe)], env=env) == 0
    dest = tmp_path / "cfg" / "systemd" / "user"
    assert (dest / "stepline.socket").read_text() == units.USER_SOCKET
    out, err = capsys.readouterr()
    assert "systemctl --user enable --now stepline.socket" in out
    assert "copy them" not in out and "useradd" not in out
    assert err == ""

    assert units.user_unit_dir({"HOME": "/h/u"}) == Path("/h/u/.config/systemd/user")


def test_dry_run_prints_and_writes_nothing(
    tmp_path: Path, exe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "units"
    assert units.main(["install", "--dry-run", "--dir", str(dest), "--bin", str(exe)]) == 0
    out = capsys.readouterr().out
    assert not dest.exists()
    for name, text in units.render([str(exe)], user=False).items():
        assert f"# --- {dest / name} ---\n{text}" in out


def test_system_units_from_a_home_dir_get_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ProtectHome=yes hides /home and /root: the service would fail with 203/EXEC.
    argv = ["install", "--dry-run", "--bin", "/home/ada/.venv/bin/stepline"]
    assert units.main(argv) == 0
    err = capsys.readouterr().err
    assert "/home/ada/.venv/bin/stepline" in err and "ProtectHome=yes" in err
    assert units.main([*argv, "--user"]) == 0
    assert "ProtectHome" not in capsys.readouterr().err
    assert units.hidden_paths(["/opt/stepline/bin/stepline"], own_env=False) == []
    assert units.hidden_paths(["/tmp/x/stepline"], own_env=False) == ["/tmp/x/stepline"]
    assert units.hidden_paths(["/homer/stepline"], own_env=False) == []


def test_install_refuses_an_environment_without_the_daemon_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(units, "DAEMON_EXTRA", ("lmdb", "no_such_module_for_stepline"))
    assert units.main(["install", "--dir", str(tmp_path)]) == 1
    assert "no_such_module_for_stepline" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_install_reports_a_dir_it_cannot_write(
    tmp_path: Path, exe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert units.main(["install", "--dir", str(blocker / "sub"), "--bin", str(exe)]) == 1
    assert f"cannot write {blocker / 'sub'}" in capsys.readouterr().err


def test_install_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        units.main([])
    assert exc.value.code == 2


def test_default_command_is_the_running_script(monkeypatch: pytest.MonkeyPatch, exe: Path) -> None:
    assert units.default_command(str(exe)) == [str(exe)]
    monkeypatch.chdir(exe.parent)  # a relative argv[0] is made absolute
    assert units.default_command("stepline") == [str(exe)]


def test_default_command_falls_back_to_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(units.sysconfig, "get_path", lambda name: str(tmp_path))
    assert units.default_command("/usr/bin/pytest") == [
        os.path.abspath(sys.executable),
        "-m",
        "stepline.cli",
    ]
    (tmp_path / "stepline").write_text("#!/bin/sh\n")
    (tmp_path / "stepline").chmod(0o755)
    assert units.default_command("/usr/bin/pytest") == [str(tmp_path / "stepline")]


def settings_of(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_system_socket_dir_outlives_the_service() -> None:
    # stepline.socket makes /run/stepline/stepline.sock; the service's
    # RuntimeDirectory= is that same directory, which systemd removes when the
    # service stops unless told to keep it, taking the listening socket's file with it.
    out = units.render([units.DEFAULT_BIN], user=False)
    (listen,) = settings_of(out["stepline.socket"])["ListenStream"]
    service = settings_of(out["stepline.service"])
    assert listen.startswith("%t/" + service["RuntimeDirectory"][0] + "/")
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    # Starting the service chowns that directory, the socket in it too, to
    # User:Group: harmless only while those are the socket's own owners.
    socket = settings_of(out["stepline.socket"])
    assert (socket["SocketUser"], socket["SocketGroup"]) == (service["User"], service["Group"])


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_stop_timeout_covers_the_daemons_drain(user: bool) -> None:
    from stepline_daemon.settings import Settings

    service = settings_of(units.render([units.DEFAULT_BIN], user)["stepline.service"])
    (timeout,) = service["TimeoutStopSec"]
    assert timeout.endswith("s")
    drain = Settings.__dataclass_fields__["drain_timeout"].default
    assert isinstance(drain, float)
    # main.serve: queued writes (drain), connections (5 s), the writer thread (drain).
    assert float(timeout.removesuffix("s")) > 2 * drain + 5
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["KillMode"] == ["mixed"]
