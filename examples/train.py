"""A toy training loop that logs, forks, rewinds and resumes: what `make demo` runs.

Run it against a daemon you started yourself with ``python examples/train.py``
(it uses ``STEPLINE_SOCKET`` or the default socket).
"""

from __future__ import annotations

import math
import random

import stepline


def train(run: stepline.Run, steps: range, lr: float, seed: int) -> None:
    rng = random.Random(seed)
    for step in steps:
        loss = 2.5 * math.exp(-lr * 300 * step / 1000) + 0.05 * rng.random()
        run.log({"train": {"loss": loss, "lr": lr}, "acc": 1 - loss / 3}, step=step, commit=True)


def main(project: str = "demo") -> dict[str, str]:
    """Returns the run ids it made, by role."""
    base = stepline.init(project=project, config={"lr": 3e-3, "model": "tiny"})
    base.define_metric("train.loss", summary="min")
    train(base, range(0, 300), lr=3e-3, seed=1)
    base.finish()

    # Fork at step 150 and try a smaller learning rate; the parent is not copied.
    fork = stepline.init(project=project, fork_from=f"{base.id}?_step=150", config={"lr": 1e-3})
    train(fork, range(fork.step, 300), lr=1e-3, seed=2)
    fork.finish()

    # Rewind the base run to step 200 (same id) and redo the tail with a new seed.
    rewound = stepline.init(project=project, id=base.id, resume_from=f"{base.id}?_step=200")
    train(rewound, range(rewound.step, 260), lr=3e-3, seed=3)
    rewound.finish()

    # The job is preempted and resumed: it continues at the last step + 1.
    resumed = stepline.init(project=project, id=base.id, resume="allow")
    train(resumed, range(resumed.step, 300), lr=3e-3, seed=4)
    resumed.finish()
    return {"base": base.id, "fork": fork.id}


if __name__ == "__main__":
    print(main())
