"""ShardWriter's crash and reuse safety: torn manifest lines, deleted shards, the per-rank lock."""

import json
import multiprocessing

import torch

from facerig.dataset import CaptureDataset, ShardWriter, read_manifest

SIZE = 8


def batch(value: int, n: int = 2) -> dict[str, torch.Tensor]:
    """n items whose image is filled with ``value``, so a record shows which batch its row came from."""
    return {"image": torch.full((n, 3, SIZE, SIZE), value, dtype=torch.uint8), "rendered": torch.zeros(n, 3, SIZE, SIZE).half(),
            "normal": torch.zeros(n, 3, SIZE, SIZE).half(), "albedo": torch.zeros(n, 3, SIZE, SIZE).half(),
            "mask": torch.ones(n, 1, SIZE, SIZE, dtype=torch.uint8)}


def records(prefix: str, n: int = 2) -> list[dict]:
    return [{"key": f"{prefix}{i}", "source": f"{prefix}{i}.png"} for i in range(n)]


def stored_values(root) -> dict[str, int]:
    ds = CaptureDataset(root)
    return {ds.records[i]["key"]: round((float(ds.get(i).image[0, 0, 0]) + 1) * 127.5) for i in range(len(ds))}


def test_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    writer = ShardWriter(tmp_path, SIZE)
    writer.write(batch(10), records("a"))
    with open(writer.manifest, "a") as f:
        f.write('{"key": "b0", "source": "b0.png", "sta')  # killed mid-append
    ShardWriter(tmp_path, SIZE).fail("c", "c.png", "no face found")
    assert [r["key"] for r in read_manifest(tmp_path)] == ["a0", "a1", "c"]
    assert writer.manifest.read_text().endswith("}\n")


def test_deleted_shard_name_is_never_reused(tmp_path):
    writer = ShardWriter(tmp_path, SIZE)
    for value, prefix in ((10, "a"), (20, "b"), (30, "c")):
        writer.write(batch(value), records(prefix))
    (tmp_path / "shards" / "000-00000.safetensors").unlink()  # a gap; its records stay in the manifest
    ShardWriter(tmp_path, SIZE).write(batch(40), records("d"))
    shards = sorted(p.stem for p in (tmp_path / "shards").iterdir())
    assert shards == ["000-00001", "000-00002", "000-00003"]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read_manifest(tmp_path) if r["shard"] != "000-00000"))
    assert stored_values(tmp_path) == {"b0": 20, "b1": 20, "c0": 30, "c1": 30, "d0": 40, "d1": 40}
    # the last shard deleted: its name is still taken by its records
    (tmp_path / "shards" / "000-00003.safetensors").unlink()
    writer = ShardWriter(tmp_path, SIZE)
    writer.write(batch(50), records("e"))
    assert (tmp_path / "shards" / "000-00004.safetensors").exists()


def _hold_lock(root, held, release) -> None:
    writer = ShardWriter(root, SIZE)
    with writer.locked():
        held.set()
        release.wait(30)
        writer.write(batch(10), records("a"))


def test_lock_serialises_writers_of_one_rank(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_lock, args=(tmp_path, held, release))
    other.start()
    assert held.wait(60)
    writer = ShardWriter(tmp_path, SIZE)  # created while the other holds the lock: its shard count is stale
    release.set()
    with writer.locked():  # waits for the other process, then renames after its shard
        writer.write(batch(20), records("b"))
    other.join(30)
    assert stored_values(tmp_path) == {"a0": 10, "a1": 10, "b0": 20, "b1": 20}
    with ShardWriter(tmp_path, SIZE, rank=1).locked():  # other ranks have their own lock
        pass
