"""``verify`` checks everything a restore checks, and ``ckptlib verify DIR`` every checkpoint.

``reader.verify()`` is empty exactly when ``restore`` (mapped or copying) and ``get_tensor``
succeed on every tensor; it also checks the metaindex block, which reading never needs.
``ckptlib verify DIR`` verifies every checkpoint the state file lists and every complete
one it does not, one line each, and writes nothing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import ckptlib
from ckptlib.cli import main
from ckptlib.format import dtypes
from ckptlib.format.bundle import Entry, encode_entry, encode_header
from ckptlib.format.crc import crc32c, mask
from ckptlib.format.footer import FOOTER_SIZE, Footer
from ckptlib.format.proto.tensor_bundle_pb2 import BundleEntryProto
from ckptlib.format.table import build_table


def entry(dtype: int, shape: tuple[int, ...], data: bytes, offset: int = 0) -> bytes:
    return encode_entry(Entry(dtype, shape, offset=offset, size=len(data), crc32c=mask(crc32c(data))))


def raw_entry(dtype: int, dims: list[int], *, size: int, crc: int) -> bytes:
    """An entry for a dtype ``Entry`` cannot encode a size for (DT_VARIANT, unknown enums)."""
    proto = BundleEntryProto(dtype=dtype, size=size, crc32c=crc)
    proto.shape.SetInParent()
    for d in dims:
        proto.shape.dim.add(size=d)
    return proto.SerializeToString()


def write_bundle(prefix: Path, items: list[tuple[bytes, bytes]], data: bytes) -> str:
    prefix.with_name(prefix.name + ".index").write_bytes(build_table(sorted([(b"", encode_header(1)), *items])))
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(data)
    return str(prefix)


def restore_outcomes(prefix: str) -> list[str]:
    """What restore (mapped, copying) and get_tensor of every tensor raise, or "ok"."""
    outcomes = []
    for read in (
        lambda: ckptlib.restore(prefix),
        lambda: ckptlib.restore(prefix, mmap=False),
        lambda: [r.get_tensor(n) for r in [ckptlib.load_checkpoint(prefix)] for n in r.keys_list()],
    ):
        try:
            read()
            outcomes.append("ok")
        except ckptlib.CheckpointError as e:
            outcomes.append(type(e).__name__)
    return outcomes


def verify(prefix: str) -> list[ckptlib.CheckpointError]:
    with ckptlib.load_checkpoint(prefix) as reader:
        return reader.verify()


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- every check restore makes --------------------------------------------------------------
def test_an_unknown_dtype_enum_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = np.ones(2, np.float32).tobytes()
    prefix = write_bundle(
        tmp_path / "m",
        [(b"v", raw_entry(999, [1], size=4, crc=mask(crc32c(b"\0" * 4)))), (b"w", entry(1, (2,), good, 4))],
        b"\0" * 4 + good,
    )
    assert "ok" not in restore_outcomes(prefix)
    problems = verify(prefix)
    assert [(type(p), p.tensor) for p in problems] == [(ckptlib.UnsupportedFeatureError, "v")]
    assert "dtype enum 999" in str(problems[0])
    code, out, _ = run(capsys, "verify", prefix)
    assert code == 1
    assert out.splitlines() == [f"UNSUPPORTED  {problems[0]}", f"{prefix}: 1 problem(s) found"]


def test_damage_in_a_tensor_ckptlib_cannot_decode_is_damage(tmp_path: Path) -> None:
    """A DT_VARIANT tensor's bytes are still checked against its checksum and its shard."""
    intact = write_bundle(
        tmp_path / "a", [(b"v", raw_entry(dtypes.DT_VARIANT, [1], size=4, crc=mask(crc32c(b"abcd"))))], b"abcd"
    )
    assert [type(p) for p in verify(intact)] == [ckptlib.UnsupportedFeatureError]
    damaged = write_bundle(
        tmp_path / "b", [(b"v", raw_entry(dtypes.DT_VARIANT, [1], size=4, crc=mask(crc32c(b"abcd"))))], b"abcX"
    )
    assert [type(p) for p in verify(damaged)] == [ckptlib.ChecksumMismatchError]
    past_end = write_bundle(tmp_path / "c", [(b"v", raw_entry(dtypes.DT_VARIANT, [1], size=400, crc=0))], b"abcd")
    assert "past the end" in str(verify(past_end)[0])


def test_entries_sharing_bytes_are_reported(tmp_path: Path) -> None:
    """Two names for the same bytes: the copying restore refuses them, so verify does."""
    data = np.arange(4, dtype=np.float32).tobytes()
    prefix = write_bundle(tmp_path / "m", [(b"a", entry(1, (4,), data)), (b"b", entry(1, (4,), data))], data)
    assert restore_outcomes(prefix)[1] == "CorruptCheckpointError"
    problems = verify(prefix)
    assert len(problems) == 1 and "overlap" in str(problems[0]) and str(tmp_path / "m") in str(problems[0])


def test_many_entries_sharing_bytes_are_reported_without_reading_them(tmp_path: Path) -> None:
    """20,000 names for one 4 MiB region would cost 80 GiB of checksums if each were read."""
    data = bytes(4 << 20)
    alias = entry(1, (1 << 20,), data)
    prefix = write_bundle(tmp_path / "m", [(f"t{i:05d}".encode(), alias) for i in range(20_000)], data)
    start = time.monotonic()
    problems = verify(prefix)
    assert time.monotonic() - start < 5
    assert len(problems) == 1 and "overlap" in str(problems[0])


def metaindex_offset(index: Path) -> int:
    return Footer.decode(index.read_bytes()[-FOOTER_SIZE:]).metaindex.offset


def test_damage_in_the_metaindex_block_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = ckptlib.save({"w": np.arange(6.0)}, tmp_path / "m")
    index = Path(prefix + ".index")
    offset = metaindex_offset(index)
    data = bytearray(index.read_bytes())
    data[offset] ^= 0x01  # the block's first byte: its (empty) restart array
    index.write_bytes(bytes(data))
    assert restore_outcomes(prefix) == ["ok"] * 3  # reading never needs it (TensorFlow ignores it too)
    problems = verify(prefix)
    assert len(problems) == 1 and isinstance(problems[0], ckptlib.CorruptCheckpointError)
    assert f"{index}: metaindex block:" in str(problems[0])
    code, out, _ = run(capsys, "verify", prefix)
    assert code == 1 and out.startswith(f"DAMAGED  {index}: metaindex block:")


def test_a_metaindex_handle_past_the_end_is_reported(tmp_path: Path) -> None:
    prefix = ckptlib.save({"w": np.arange(6.0)}, tmp_path / "m")
    index = Path(prefix + ".index")
    data = bytearray(index.read_bytes())
    data[-FOOTER_SIZE] = 0x7F  # the metaindex offset's first varint byte
    index.write_bytes(bytes(data))
    assert "metaindex block: bad block handle" in str(verify(prefix)[0])


def test_verify_agrees_with_restore_on_random_damage(tmp_path: Path) -> None:
    """Flipped, set and cut bytes anywhere in a bundle of every kind of entry: verify finds a
    problem exactly when a restore or get_tensor fails (or the metaindex is damaged)."""
    base = tmp_path / "base"
    writer = ckptlib.BundleWriter(base / "m", num_shards=2)
    writer.add("a", np.arange(10, dtype=np.float32))
    writer.add("b", np.array([b"xy", b"", b"zzz"], dtype=object))
    writer.add("c", np.int64(5))
    writer.add("d", np.ones((3, 2), np.float64))
    writer.add_slice("p", [4, 2], "0,2:-", np.zeros((2, 2), np.float32))
    writer.add_slice("p", [4, 2], "2,2:-", np.ones((2, 2), np.float32))
    writer.finish()
    names = sorted(p.name for p in base.iterdir() if not p.name.startswith(".") and p.stat().st_size)
    rng = random.Random(13)
    for trial in range(150):
        case = Path(shutil.copytree(base, tmp_path / f"t{trial}"))
        victim = case / rng.choice(names)
        data = bytearray(victim.read_bytes())
        how = rng.choice(["flip", "set", "cut"])
        if how == "cut":
            data = data[: rng.randrange(len(data))]
        else:
            i = rng.randrange(len(data))
            data[i] = data[i] ^ (1 << rng.randrange(8)) if how == "flip" else rng.randrange(256)
        victim.write_bytes(bytes(data))
        prefix = str(case / "m")
        try:
            problems = [str(p) for p in verify(prefix)]
        except ckptlib.CheckpointError as e:  # the index does not even open: restore cannot either
            problems = [str(e)]
        restores = restore_outcomes(prefix) if os.path.exists(prefix + ".index") else ["no index"]
        if all(outcome == "ok" for outcome in restores):
            assert all("metaindex block" in p for p in problems), (trial, victim.name, how, problems)
        else:
            assert problems, (trial, victim.name, how, restores)
        shutil.rmtree(case)


# -- ckptlib verify DIR ------------------------------------------------------------------------
def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Saver steps 1-3 (all listed), an unlisted complete checkpoint ``model.ckpt-100``, an
    unlisted incomplete one ``model.ckpt-200`` (no data), and a stale temporary file."""
    directory = tmp_path / "run"
    saver = ckptlib.Saver(max_to_keep=3)
    for step in (1, 2, 3):
        saver.save({"w": np.full(3, float(step))}, str(directory / "model.ckpt"), global_step=step)
    ckptlib.save({"x": np.ones(2), "y": np.zeros(1)}, directory / "model.ckpt-100")
    ckptlib.save({"z": np.ones(2)}, directory / "model.ckpt-200")
    os.remove(directory / "model.ckpt-200.data-00000-of-00001")
    (directory / "model.ckpt-9.index.ckptlib-tmp-h00000000-999999-abcdefabcdef").write_bytes(b"partial")
    return directory


def test_verify_dir_checks_every_checkpoint_one_line_each(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_2 = run_dir / "model.ckpt-2.data-00000-of-00001"
    damaged = bytearray(data_2.read_bytes())
    damaged[0] ^= 0xFF
    data_2.write_bytes(bytes(damaged))
    before = snapshot(run_dir)

    code, out, err = run(capsys, "verify", run_dir)
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines[1].startswith(f"DAMAGED  {data_2}: tensor 'w': checksum does not match")
    assert lines[:1] + lines[2:] == [
        f"{run_dir / 'model.ckpt-1'}: OK, 1 tensor(s) verified",
        f"{run_dir / 'model.ckpt-2'}: 1 problem(s) found",
        f"{run_dir / 'model.ckpt-3'}: OK, 1 tensor(s) verified",
        f"{run_dir / 'model.ckpt-100'}: OK, 2 tensor(s) verified",
        f"{run_dir}: 1 of 4 checkpoint(s) with problems",
    ]

    code, out, _ = run(capsys, "verify", run_dir, "--json")
    report = json.loads(out)
    assert code == 1 and report["directory"] == str(run_dir) and report["ok"] is False
    assert [(Path(r["prefix"]).name, r["listed"], r["ok"], r["tensors"]) for r in report["checkpoints"]] == [
        ("model.ckpt-1", True, True, 1),
        ("model.ckpt-2", True, False, 1),
        ("model.ckpt-3", True, True, 1),
        ("model.ckpt-100", False, True, 2),
    ]
    assert str(data_2) in report["checkpoints"][1]["problems"][0]
    assert snapshot(run_dir) == before  # reading never writes


def test_verify_dir_reports_listed_checkpoints_that_are_gone(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.remove(run_dir / "model.ckpt-1.index")
    code, out, _ = run(capsys, "verify", run_dir)
    assert code == 1
    assert f"MISSING  {run_dir / 'model.ckpt-1'}: no checkpoint found" in out
    assert out.splitlines()[-1] == f"{run_dir}: 1 of 4 checkpoint(s) with problems"


def test_verify_dir_with_an_unreadable_state_file_still_checks_what_is_there(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "checkpoint").write_text("all_model_checkpoint_paths: {{{\n")
    code, out, _ = run(capsys, "verify", run_dir)
    lines = out.splitlines()
    assert code == 1 and lines[0].startswith(f"DAMAGED  {run_dir / 'checkpoint'}: ")
    assert lines[-1] == f"{run_dir}: 0 of 4 checkpoint(s) with problems, state file unreadable"


def test_verify_dir_all_intact_and_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saver = ckptlib.Saver()
    for step in (1, 2):
        saver.save({"w": np.ones(2)}, str(tmp_path / "run" / "model.ckpt"), global_step=step)
    code, out, _ = run(capsys, "verify", tmp_path / "run")
    assert code == 0 and out.splitlines()[-1] == f"{tmp_path / 'run'}: OK, 2 checkpoint(s) verified"
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "verify", tmp_path / "empty")
    assert code == 1 and out == "" and "no checkpoints in this directory" in err
