"""The step loop every step-based trainer runs, and what Ctrl-C does to a run.

After each optimizer step, in this order: the statistics reach the host (every ``log_every`` steps and
before each checkpoint: one log line per step, the NaN check), the trainer's hooks run (samples every
``sample_every``, evaluations at their own cadence; each also at the last step), and a checkpoint is
written (every ``ckpt_every`` and at the last step). Ctrl-C raises ``facerig.interrupt.Interrupted``, whose
text is the one line the ``facerig`` command prints before it exits with 130 (``interrupted at step N;
resume with --resume ...``); the run folder is left as it was (checkpoint writes are atomic and
``latest.json`` names only a complete one), so ``--resume`` continues it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from facerig.interrupt import interrupts_say
from facerig.training.options import StepOptions
from facerig.training.run_folder import RunFolder


class StepTrainer(Protocol):
    """What ``train_steps`` drives. ``step`` counts finished steps; ``train_step`` returns that step's
    statistics (named ``STATS``) as one device tensor, so nothing waits on the host between log flushes."""

    STATS: tuple[str, ...]
    step: int
    folder: RunFolder

    def batches(self) -> Iterator: ...  # endless; a trainer that draws its own batches yields None
    def train_step(self, batch) -> torch.Tensor: ...
    def log_fields(self) -> dict: ...  # extra fields of this flush's log lines (lr, epoch, ...)
    def hooks(self) -> list[tuple[int, Callable[[float], object]]]: ...  # (every, fn(seconds so far))
    def save(self) -> Path: ...  # writes step ``step``'s checkpoint and commits it


def interrupted_line(step: int, run: RunFolder) -> str:
    latest = run.latest()
    saved = f"from its step {int(latest.name.removeprefix('step_'))} checkpoint" if latest else "it starts over: no checkpoint yet"
    return f"interrupted at step {step}; resume with --resume ({saved})"


def train_steps(trainer: StepTrainer, options: StepOptions, desc: str, shown: tuple[str, ...] = ()) -> Path | None:
    """Train from ``trainer.step`` to ``options.steps``; the last checkpoint written (None: no step ran).
    ``shown``: the statistics shown beside the progress bar."""
    pending: list[torch.Tensor] = []
    start, last = time.time(), None
    batches = trainer.batches()
    with interrupts_say(lambda: interrupted_line(trainer.step, trainer.folder)), \
            tqdm(total=options.steps, initial=trainer.step, desc=desc, disable=not trainer.folder.main) as bar:
        while trainer.step < options.steps:
            pending.append(trainer.train_step(next(batches)))
            trainer.step += 1
            bar.update(1)
            step, end = trainer.step, trainer.step == options.steps
            save = step % options.ckpt_every == 0 or end
            if save or step % options.log_every == 0:
                records = trainer.folder.log(pending, step, trainer.STATS, **trainer.log_fields(),
                                          elapsed_s=round(time.time() - start, 3))
                if records and shown:
                    bar.set_postfix({k: f"{records[-1][k]:.4g}" for k in shown})
            for every, hook in trainer.hooks():
                if step % every == 0 or end:
                    hook(time.time() - start)
            if save:
                last = trainer.save()
    return last
