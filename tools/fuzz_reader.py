"""Coverage-guided fuzzing of the checkpoint reader with atheris.

Each input is one checkpoint: ``len(index):u32le | index bytes | data bytes``, written to
a scratch directory and opened, listed, read, verified and restored whole with ckptlib, with
and without memory maps. The only rule:
nothing but a ``ckptlib.CheckpointError`` may come out. Seeds are the golden checkpoints.

    pip install atheris
    python tools/fuzz_reader.py -max_total_time=3600 -rss_limit_mb=2048 fuzz-corpus/

Runs until stopped (or for ``-max_total_time`` seconds); a finding is written as
``crash-<hash>`` in the working directory and reproduced with ``python tools/fuzz_reader.py crash-<hash>``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import ckptlib

SCRATCH = tempfile.mkdtemp(prefix="ckptlib-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
PREFIX = os.path.join(SCRATCH, "model.ckpt")


def split(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < 4:
        return data, b""
    (n,) = struct.unpack_from("<I", data)
    return data[4 : 4 + n], data[4 + n :]


def test_one_input(data: bytes) -> None:
    index, shard = split(data)
    with open(PREFIX + ".index", "wb") as f:
        f.write(index)
    with open(PREFIX + ".data-00000-of-00001", "wb") as f:
        f.write(shard)
    for mmap in (False, True):
        try:
            with ckptlib.load_checkpoint(PREFIX, mmap=mmap) as reader:
                for name in reader.keys_list():
                    reader.tensor_info(name)
                    reader.get_tensor(name)
                reader.verify()
        except ckptlib.CheckpointError:
            pass
        with contextlib.suppress(ckptlib.CheckpointError):
            ckptlib.restore(PREFIX, mmap=mmap)  # every tensor at once (bulk_read, span_checks)


def write_seeds(corpus: Path) -> None:
    """One seed per single-shard golden checkpoint."""
    golden = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden"
    corpus.mkdir(parents=True, exist_ok=True)
    for index in golden.glob("*/*.index"):
        data_file = index.with_suffix(".data-00000-of-00001")
        if data_file.exists() and index.stat().st_size < 100_000:
            blob = index.read_bytes()
            (corpus / f"seed-{index.parent.name}-{index.stem}").write_bytes(
                struct.pack("<I", len(blob)) + blob + data_file.read_bytes()
            )


if __name__ == "__main__":
    corpora = [a for a in sys.argv[1:] if not a.startswith("-") and not os.path.isfile(a)]
    for corpus in corpora:
        write_seeds(Path(corpus))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
