"""One virtualenv per peer tracker, made on first use and reused after.

``ensure_venv("mlflow", Path("bench/.venvs"))`` returns the python of
``bench/.venvs/mlflow``, creating it with ``python -m venv`` and ``pip install`` of
the pinned version when it is missing, was left half-made, or holds another pin. A
marker file, written last, records what was installed, so a rerun costs one stat.
The root gets a ``.gitignore`` of ``*`` so git never sees the virtualenvs.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

PINS: dict[str, str] = {
    "wandb": "wandb==0.31.0",
    "trackio": "trackio==0.43.0",
    "mlflow": "mlflow==3.17.2",
}
MARKER = ".stepline-bench.json"
INSTALL_TIMEOUT_S = 1800


class VenvError(RuntimeError):
    """A peer's virtualenv could not be made."""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def wanted(tool: str) -> dict[str, str]:
    """What the marker must say for a virtualenv of ``tool`` to be reused."""
    if tool not in PINS:
        raise ValueError(f"unknown peer {tool!r}; known: {', '.join(PINS)}")
    return {"requirement": PINS[tool]}


def is_ready(venv: Path, want: dict[str, str]) -> bool:
    try:
        have = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(have == want and venv_python(venv).exists())


def _run(cmd: list[str], what: str) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise VenvError(f"{what}: timed out after {e.timeout:.0f}s: {' '.join(cmd)}") from e
    if out.returncode != 0:
        tail = (out.stderr or out.stdout)[-3000:]
        raise VenvError(f"{what}: exit {out.returncode}: {' '.join(cmd)}\n{tail}")


def ensure_venv(tool: str, root: Path, *, base_python: str | None = None) -> Path:
    """The python executable of ``root/<tool>``, a virtualenv holding ``PINS[tool]``.

    ``base_python`` makes the virtualenv (default: the interpreter running this code,
    so peers run on the same Python version as stepline). Concurrent callers on the
    same root wait for each other on a lock file instead of installing twice.
    """
    base = base_python or sys.executable
    want = wanted(tool)
    root = Path(root).absolute()
    venv = root / tool
    if is_ready(venv, want):
        return venv_python(venv)
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    with open(root / f".{tool}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(venv, want):
            return venv_python(venv)
        (venv / MARKER).unlink(missing_ok=True)
        _run([base, "-m", "venv", "--clear", str(venv)], f"{tool}: creating {venv}")
        py = venv_python(venv)
        _run(
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PINS[tool]],
            f"{tool}: installing {PINS[tool]}",
        )
        (venv / MARKER).write_text(json.dumps(want) + "\n")
    return py
