"""Run states and every transition between them, in one table.

Any code that changes a run's state calls :func:`transition`; a move not listed
here is a bug, and raises instead of silently writing a state nobody expects.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CRASHED = "crashed"
    # The timeline a rewind replaced: read-only, still readable, linked from the
    # run that replaced it.
    ARCHIVED = "archived"


class Event(StrEnum):
    FINISH_OK = "finish_ok"  # finish(exit_code=0)
    FINISH_ERROR = "finish_error"  # finish(exit_code!=0)
    DISCONNECT = "disconnect"  # the owning client went away without finish
    RESUME = "resume"  # init(resume=...) of an existing run
    REATTACH = "reattach"  # the owning client reconnected and writes again
    REWIND = "rewind"  # init(resume_from=...) replaced this timeline


_R, _F, _X, _C, _A = State.RUNNING, State.FINISHED, State.FAILED, State.CRASHED, State.ARCHIVED

TRANSITIONS: dict[tuple[State, Event], State] = {
    (_R, Event.FINISH_OK): _F,
    (_R, Event.FINISH_ERROR): _X,
    (_C, Event.FINISH_OK): _F,
    (_C, Event.FINISH_ERROR): _X,
    (_R, Event.DISCONNECT): _C,
    (_C, Event.REATTACH): _R,
    (_R, Event.REATTACH): _R,
    **{(s, Event.RESUME): _R for s in (_R, _F, _X, _C)},
    **{(s, Event.REWIND): _A for s in (_R, _F, _X, _C)},
}


class InvalidTransition(Exception):
    pass


def transition(state: str, event: Event) -> State:
    try:
        return TRANSITIONS[(State(state), event)]
    except KeyError:
        raise InvalidTransition(f"no transition from {state!r} on {event.value!r}") from None


def can(state: str, event: Event) -> bool:
    return (State(state), event) in TRANSITIONS


WRITABLE = frozenset({State.RUNNING, State.CRASHED})
