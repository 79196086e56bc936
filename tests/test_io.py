"""Atomic writers: durable (file and folder fsynced around the rename) and created with the umask's mode."""

import os
import stat

import pytest
import torch

from facerig import io
from facerig.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json

WRITERS = {
    "bytes": lambda p: atomic_write_bytes(p, b"data"),
    "json": lambda p: atomic_write_json(p, {"a": 1}),
    "safetensors": lambda p: atomic_save_safetensors({"x": torch.zeros(2)}, p),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_file_and_folder_are_fsynced_around_the_rename(kind, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", "dir" if os.path.isdir(target) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.path.getsize(src) > 0))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    WRITERS[kind](tmp_path / "out")
    assert events[-3:] == [("fsync", "file"), ("rename", True), ("fsync", "dir")], events


@pytest.mark.parametrize("umask", [0o022, 0o077])
@pytest.mark.parametrize("kind", WRITERS)
def test_files_get_the_umask_mode(kind, umask, tmp_path):
    old = os.umask(umask)
    try:
        WRITERS[kind](tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no temporary file left behind"


def test_failed_write_leaves_the_old_file(tmp_path):
    atomic_write_bytes(tmp_path / "out", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "out", None)
    assert (tmp_path / "out").read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1
