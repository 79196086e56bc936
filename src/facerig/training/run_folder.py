"""A training run's folder: where it resumes from, what it may not change on resume, its logs and checkpoints.

    RUN/latest.json                  {"checkpoint": "checkpoints/step_NNNNNNNN", "step": N}
    RUN/checkpoints/step_NNNNNNNN/   the trainer's files, trainer.json among them (with "train_config")
    RUN/config.json                  written when the run starts
    RUN/log.jsonl (and other logs)   one JSON line per step (or evaluation), each with its "step"

``latest.json`` is rewritten (atomically) only after every file of a checkpoint is on disk (``commit``), so a
run killed at any moment resumes from a whole checkpoint; the log lines of steps after it are dropped on
resume (``truncate_logs``: they are trained again) and checkpoint folders past it are deleted at the next
commit. Nothing here is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch

from facerig.io import atomic_write_bytes, atomic_write_json, writable_folder
from facerig.weights import LATEST_FILE, latest_checkpoint

TRAINER_FILE = "trainer.json"


def same_setting(key: str, value):
    """A comparable form of a run setting: data folders by their resolved path."""
    return str(Path(value).resolve()) if key in ("data", "init") and value else value


def changed_settings(before: dict, config, keys) -> list[str]:
    """``"key: old -> new"`` for each setting in ``keys`` that ``config`` changes from ``before`` (the config a
    run was made with). The one resume rule of every trainer: a setting missing from ``before`` (added to the
    code after the run began) counts as its default, which is what that run had."""
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    changed = []
    for key in keys:
        old, new = before.get(key, defaults.get(key)), getattr(config, key)
        if same_setting(key, old) != same_setting(key, new):
            changed.append(f"{key}: {old!r} -> {new!r}")
    return changed


def log_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def flush_statistics(pending: list[torch.Tensor], last_step: int, names: tuple[str, ...], log_path: Path | None,
                     **extra) -> list[dict]:
    """Bring the per-step statistics kept on the device to the host in one sync, stop at the first
    non-finite one (before anything is checkpointed), and append one JSON line per step to ``log_path``
    (None: another process writes the log). Returns the records; ``pending`` is emptied."""
    if not pending:
        return []
    rows = torch.stack(pending).tolist()
    pending.clear()
    first = last_step - len(rows) + 1
    records = [{**dict(zip(names, row)), "step": first + i, **extra} for i, row in enumerate(rows)]
    for record in records:
        bad = next((n for n in names if not math.isfinite(record[n])), None)
        if bad is not None:
            raise FloatingPointError(f"step {record['step']}: {bad} is {record[bad]}")
    if log_path is not None:
        with open(log_path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return records


def rotate_checkpoints(current: Path, keep: int) -> None:
    """Delete the checkpoint folders beside ``current`` past its step (a killed run's leftovers) and all but
    the newest ``keep - 1`` before it."""
    others = [p for p in sorted(current.parent.glob("step_*")) if p != current]
    older = [p for p in others if p.name < current.name]
    for path in [p for p in others if p.name > current.name] + older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(path)


class RunFolder:
    """One run's folder, for the process that writes it (``main``) or another rank of the run (reads only).

    ``command`` names the run in what it prints; ``logs`` are the per-step JSON-lines files it keeps.
    """

    def __init__(self, path: str | Path, command: str, logs: tuple[str, ...] = ("log.jsonl",), main: bool = True):
        self.path = writable_folder(path, "run folder")
        self.command, self.logs, self.main = command, logs, main
        self.log_path = self.path / logs[0]

    def latest(self) -> Path | None:
        """The checkpoint folder ``latest.json`` names; None before the first checkpoint."""
        return latest_checkpoint(self.path) if (self.path / LATEST_FILE).exists() else None

    def resume_from(self, resume: bool) -> Path | None:
        """The checkpoint to continue from: the latest with ``resume``, else None (a fresh run). A fresh run
        over a run's checkpoints is refused; ``resume`` with nothing to resume starts fresh, saying so."""
        latest = self.latest()
        if not resume:
            if latest is not None:
                raise ValueError(f"{self.path}: already holds a run's checkpoints; resume it or choose another out folder")
            return None
        if latest is None and self.main:
            print(f"facerig {self.command}: nothing to resume in {self.path} (no {LATEST_FILE}); starting fresh")
        return latest

    @staticmethod
    def trainer_state(ckdir: Path) -> dict:
        """A checkpoint's ``trainer.json``: position, optimizer state and the run's ``train_config``."""
        return json.loads((ckdir / TRAINER_FILE).read_text())

    def refuse_changes(self, ckdir: Path, changed: list[str]) -> None:
        """Stop a resume that changes what defines the run (``changed_settings``); other settings apply."""
        if changed:
            raise ValueError(f"{ckdir}: --resume with settings that define the run changed ({'; '.join(changed)}); "
                             f"start a new run in another --out instead")

    def start(self, config: dict) -> None:
        """A fresh run: its ``config.json``, and no logs left from an earlier start that never checkpointed."""
        if self.main:
            atomic_write_json(self.path / "config.json", config)
            for name in self.logs:
                (self.path / name).unlink(missing_ok=True)

    def truncate_logs(self, step: int) -> None:
        """Drop the log lines of steps after ``step`` (the checkpoint resumed from: they are trained again)
        and torn lines (a kill mid-write)."""
        for path in (self.path / name for name in self.logs):
            if self.main and path.exists():
                lines = [ln for ln in path.read_text().splitlines() if (s := log_step(ln)) is not None and s <= step]
                atomic_write_bytes(path, "".join(ln + "\n" for ln in lines).encode())

    def log(self, pending: list[torch.Tensor], step: int, names: tuple[str, ...], **extra) -> list[dict]:
        """``flush_statistics`` into ``log.jsonl`` (written by the main process only)."""
        return flush_statistics(pending, step, names, self.log_path if self.main else None, **extra)

    def append(self, name: str, record: dict) -> None:
        """One JSON line onto the log ``name`` (one of ``logs``; main process only)."""
        if self.main:
            with open(self.path / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step:08d}"

    def commit(self, step: int, keep: int) -> Path:
        """Make step ``step``'s checkpoint, all of whose files are written, the one to resume from; then keep
        only the newest ``keep`` (call it on every rank after they all wrote theirs)."""
        ckdir = self.checkpoint(step)
        if self.main:
            atomic_write_json(self.path / LATEST_FILE, {"checkpoint": ckdir.relative_to(self.path).as_posix(), "step": step})
            rotate_checkpoints(ckdir, keep)
        return ckdir
