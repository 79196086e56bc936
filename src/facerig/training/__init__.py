"""What every facerig training run shares, written once.

- ``options``: ``option`` / ``add_dataclass_arguments`` (config dataclasses drive the command line), and the
  common options as dataclasses: ``RunOptions`` (out, seed, device, precision, threads, resume) and
  ``StepOptions`` (those + steps, log_every, sample_every, ckpt_every, keep_checkpoints).
- ``run_folder``: ``RunFolder`` (latest.json, the resume rule, checkpoint commit and rotation, log.jsonl and
  its truncation on resume, the NaN stop) and ``changed_settings``, the one rule for what a resume may not
  change: a setting missing from an old run's saved config counts as its default.
- ``hardware``: ``setup_hardware``, the one place device, precision, threads and torchrun placement are set.
- ``loop``: ``train_steps``, the step loop with its log / sample / evaluation / checkpoint cadence; Ctrl-C
  in it becomes one line (``facerig X: interrupted at step N; resume with --resume ...``) and exit code 130
  from the ``facerig`` command (``facerig.interrupt``: ``interrupts_say`` gives any other job its line).
- ``state``: optimizer and RNG state as tensors + JSON (no pickle).

``facerig train`` (``diffusion.train``) and ``facerig gan train`` (``stylerig.gan_train``) are built on it:
their configs subclass ``StepOptions`` (a trainer's own default cadence via ``redefault``), their trainers
are ``loop.StepTrainer``s.

The seam for a trainer that is not one step loop (``facerig stylerig train``, whose stages each resume on
their own, uses it): its config subclasses ``RunOptions`` for the common options; ``setup_hardware(cfg.device,
cfg.precision, cfg.threads)`` gives its device and precision (and sets ``--threads``);
``changed_settings(saved, cfg, keys)`` is the resume check against the config it saved,
``RunFolder.refuse_changes`` the standard message; ``with facerig.interrupt.interrupts_say("...; continue
with --resume"):`` around its work gives its Ctrl-C line (without it the command says ``facerig stylerig
train: interrupted``, still exit code 130). A run folder's ``latest.json`` is read through
``facerig.weights.latest_checkpoint``, so loaders need nothing from here.
"""

from facerig.training.options import RunOptions, StepOptions, add_dataclass_arguments, config_from_args, option, redefault
from facerig.training.run_folder import (
    LATEST_FILE, RunFolder, changed_settings, flush_statistics, log_step, rotate_checkpoints, same_setting,
)
from facerig.training.state import optimizer_state_from_files, optimizer_state_to_files, rng_state, set_rng_state

__all__ = [
    "LATEST_FILE", "RunFolder", "RunOptions", "StepOptions", "add_dataclass_arguments", "changed_settings",
    "config_from_args", "flush_statistics", "log_step", "optimizer_state_from_files", "optimizer_state_to_files",
    "option", "redefault", "rng_state", "rotate_checkpoints", "same_setting", "set_rng_state",
]
