import pytest
import torch

from facerig import runtime


def test_resolve_precision():
    expected = "bf16" if runtime.cpu_has_bf16() else "fp32"
    assert runtime.resolve_precision("auto", "cpu") == expected
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: emulated if need be
    with pytest.raises(ValueError, match="precision"):
        runtime.resolve_precision("fp16", "cpu")


def test_fast_path_settings():
    assert runtime.memory_format("bf16") == torch.channels_last
    assert runtime.memory_format("fp32") == torch.contiguous_format
    with runtime.autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with runtime.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_threads_from_option_environment_or_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert runtime.configure_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert 1 <= runtime.configure_threads() <= runtime.available_cores()
        with pytest.raises(ValueError, match="threads"):
            runtime.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_idle_cores_leaves_a_busy_core_alone():
    import subprocess
    import sys
    import time

    if runtime.available_cores() < 2:
        pytest.skip("one usable core")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        assert runtime.idle_cores(0.2) <= runtime.available_cores() - 1
    finally:
        spinner.kill()
        spinner.wait()


def test_every_command_takes_threads():
    from facerig.cli import COMMANDS, build_parser

    for name in COMMANDS:
        action = build_parser(name)._subparsers._group_actions[0].choices[name]
        assert "--threads" in action._option_string_actions, name
