"""How facerig uses the hardware: CPU threads, numeric precision, memory layout and the CPU allocator.

Every command that runs a network goes through ``configure_threads`` and ``resolve_precision``:

- threads: ``--threads N``, else ``OMP_NUM_THREADS``, else the cores this process may run on that other
  processes leave idle. OpenMP spin-waits, so two jobs that each take every core of a small machine slow
  each other down many times over.
- precision ``auto`` picks bf16 autocast where the hardware computes bf16 natively (CPUs with AMX or
  AVX512-BF16, CUDA GPUs of compute capability 8 and newer) and fp32 elsewhere. bf16 runs convolutions in
  channels_last layout, the one oneDNN's AMX kernels and cuDNN's tensor-core kernels read directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from functools import lru_cache

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# One wording for every command that takes these options (``add_runtime_arguments``, ``facerig.training``).
THREADS_HELP = "CPU threads (default: OMP_NUM_THREADS, else the cores other processes leave idle)"
PRECISION_HELP = "auto: bf16 autocast where the CPU (AMX/AVX512-BF16) or GPU computes bf16 natively, else fp32"


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16); elsewhere bf16 is emulated, slowly."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> the fastest safe precision on ``device`` ("bf16" or "fp32"); the others unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for a resolved precision "bf16"; a no-op context for "fp32"."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def memory_format(precision: str) -> torch.memory_format:
    """The activation layout to run convolutions in at a resolved precision."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(sample_s: float = 0.05) -> int:
    """Usable cores minus those other processes keep busy, from a short sample of /proc/stat (at least 1).

    OpenMP threads spin-wait between parallel regions: a job taking a core another job is using makes both
    several times slower (the README edit: 5.6 s alone, 30-38 s beside a 2-thread job with 2 threads,
    7-10 s with 1). Off Linux, every usable core.
    """
    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values) - idle, sum(values)

    cores = available_cores()
    try:
        busy0, total0 = busy_and_total()
        time.sleep(sample_s)
        busy1, total1 = busy_and_total()
    except (OSError, ValueError, IndexError):
        return cores
    machine = os.cpu_count() or cores
    busy = machine * (busy1 - busy0) / max(1, total1 - total0)  # cores' worth of work by others
    return max(1, min(cores, round(machine - busy)))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count: ``threads``, else ``OMP_NUM_THREADS``, else the usable cores that
    other processes leave idle (``idle_cores``)."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else idle_cores()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    return threads


@lru_cache(maxsize=1)
def tune_cpu_allocator() -> None:
    """Keep freed activation memory in the process instead of returning it to the kernel.

    glibc serves blocks over 128 KiB..32 MiB with fresh ``mmap``s and unmaps them on free, so every training
    step page-faults through all of its activations again (about 7 % of a CPU step here). Raising the mmap
    and trim thresholds makes freed blocks reusable. Linux/glibc only; elsewhere a no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 64 << 20)


def add_runtime_arguments(parser, precision: bool = True) -> None:
    """``--threads`` (and ``--precision``) for a subcommand's argparse parser."""
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    if precision:
        parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
