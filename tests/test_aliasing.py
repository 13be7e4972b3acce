"""Index entries that alias the same bytes are refused by every read path, with bounded work.

The hostile index gives 20,000 names to one 64 MiB region of a sparse data file, each with
the region's correct checksum: a reader that checksums each alias would do 1.3 TB of work.
The reads run in a child whose crc32c counts the bytes it is given and gives up past a
budget of a few times the file's size, so a reader that is not bounded fails quickly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ckptlib.format.bundle import encode_header, encode_plain_entry
from ckptlib.format.crc import crc32c, mask
from ckptlib.format.table import build_table

REGION = 64 << 20
ALIASES = 20_000

CHILD = textwrap.dedent(
    """
    import json, sys
    import crc32c

    budget = [int(sys.argv[2])]
    real = crc32c.crc32c

    def counting(data, *args):
        budget[0] -= memoryview(data).nbytes
        if budget[0] < 0:
            raise RuntimeError("checksummed more than the budget")
        return real(data, *args)

    crc32c.crc32c = counting  # before ckptlib binds it
    import ckptlib

    prefix, way = sys.argv[1], sys.argv[3]
    try:
        if way.startswith("restore"):
            ckptlib.restore(prefix, mmap=way.endswith("mmap"))
        elif way.startswith("get_tensor"):
            with ckptlib.load_checkpoint(prefix, mmap=way.endswith("mmap")) as reader:
                for name in reader.keys_list():
                    reader.get_tensor(name)
        elif way == "verify":
            with ckptlib.load_checkpoint(prefix) as reader:
                problems = reader.verify()
            raise problems[0] if problems else AssertionError("verify found nothing")
        outcome = "values"
    except ckptlib.CheckpointError as e:
        outcome = type(e).__name__ + ": " + str(e)
    except Exception as e:
        outcome = "FOREIGN " + type(e).__name__ + ": " + str(e)
    print(json.dumps(outcome))
    """
)


@pytest.fixture(scope="module")
def aliased(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("aliasing") / "model.ckpt"
    with open(f"{prefix}.data-00000-of-00001", "wb") as f:
        f.truncate(REGION)  # sparse: no disk space, reads as zeros
    entry = encode_plain_entry(1, (REGION // 4,), 0, 0, REGION, mask(crc32c(bytes(REGION))))
    items = [(b"", encode_header(1)), *((f"alias_{i:05d}".encode(), entry) for i in range(ALIASES))]
    Path(f"{prefix}.index").write_bytes(build_table(items))
    return prefix


@pytest.mark.parametrize("way", ["restore", "restore mmap", "get_tensor", "get_tensor mmap", "verify"])
def test_aliasing_entries_are_refused_after_bounded_work(aliased: Path, way: str) -> None:
    budget = 4 * REGION
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(aliased), str(budget), way], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome.startswith("CorruptCheckpointError: "), outcome
    assert "index entries overlap" in outcome and "model.ckpt.index" in outcome and "alias_0000" in outcome, outcome
