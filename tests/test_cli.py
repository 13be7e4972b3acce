"""The ``ckptlib`` command, driven as a user drives it: a real subprocess per call.

Every command (ls, inspect, verify, diff, convert) runs as ``python -m ckptlib ...`` (and once
through the installed ``ckptlib`` console script) on checkpoints written by ckptlib and by
TensorFlow (``tests/data/golden``), intact and damaged. The tests check exit codes (0 ok,
1 damaged or missing input, 2 usage error), the key lines of the text output, the parsed
``--json``, that errors are one ``error:`` line without a traceback, and that progress lines
appear only when stderr is a terminal.

The tests write only under pytest's temporary directories and never import TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptlib

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
GOLDEN_CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and not p.name.startswith("_"))
COMMANDS = ["ls", "inspect", "verify", "diff", "convert"]
TOTALS = re.compile(r"^(\d+) tensor\(s\), .+ in (\d+) file\(s\): (.+)$")


# ----------------------------------------------------------------------------------------
# helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # this checkout's ckptlib, whatever is installed; no .pyc files written into the tree
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("PYTHONWARNINGS", None)
    return env


def cli(*args: object, cwd: Path | None = None, rc: int | None = 0, argv0: list[str] | None = None):
    """Run ``python -m ckptlib ARGS`` with stdout and stderr piped; check the exit code."""
    cmd = (argv0 or [sys.executable, "-m", "ckptlib"]) + [str(a) for a in args]
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    where = f"$ ckptlib {' '.join(map(str, args))}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    if rc is not None:
        assert proc.returncode == rc, where
    assert "Traceback" not in proc.stderr, where
    assert "Traceback" not in proc.stdout, where
    return proc


def cli_many(*calls: list, rc: int | list[int | None] | None = 0) -> list[subprocess.CompletedProcess]:
    """Several independent ``cli`` calls at once (each still its own process): every call pays
    ~0.3 s of interpreter, numpy and ckptlib start-up, so they run side by side. ``rc`` is one
    exit code for all or one per call."""
    rcs = rc if isinstance(rc, list) else [rc] * len(calls)
    assert len(rcs) == len(calls)
    workers = max(2, min(8, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: cli(*job[0], rc=job[1]), zip(calls, rcs)))


def cli_json(*args: object, rc: int = 0, cwd: Path | None = None, strict: bool = True):
    """Run with ``--json`` and parse stdout; ``strict``: refuse NaN/Infinity, which are not JSON."""
    proc = cli(*args, "--json", rc=rc, cwd=cwd)
    return json.loads(proc.stdout, parse_constant=_no_constant if strict else None)


def _no_constant(name: str):
    raise AssertionError(f"--json output is not strict JSON: it contains {name}")


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """stderr carries exactly one ``error:`` line (argparse may print a usage line before it)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("ckptlib"), proc.stderr
    assert all(line.startswith(("usage:", "ckptlib")) or line.startswith(" ") for line in lines), proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def table(stdout: str) -> dict[str, list[str]]:
    """``inspect`` rows by name: [dtype, shape, size, shard]; value/stat lines are skipped."""
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "DTYPE", "SHAPE"], stdout
    rows = {}
    for line in lines[1:-1]:
        if line.startswith("    "):
            continue
        m = re.match(r"^(\S+)\s+(\S+)\s+(\[[^\]]*\])\s+(\S+ \S+)\s+(.+)$", line)
        assert m, line
        rows[m.group(1)] = [m.group(2), m.group(3), m.group(4), m.group(5)]
    return rows


def totals(stdout: str) -> tuple[int, int, str]:
    m = TOTALS.match(stdout.splitlines()[-1])
    assert m, stdout
    return int(m.group(1)), int(m.group(2)), m.group(3)


def value_lines(stdout: str, name: str) -> list[str]:
    """The indented lines printed under tensor ``name`` by ``inspect``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split(" ", 1)[0] == name)
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        out.append(line[4:])
    return out


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def manifest(case: str) -> dict:
    directory = GOLDEN / case
    if (directory / "expected.json").exists():
        return json.loads((directory / "expected.json").read_text(encoding="utf-8"))
    with gzip.open(directory / "expected.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


def golden_prefix(case: str) -> Path:
    """The prefix to hand to the CLI (a V1 sharded save by its base name)."""
    return GOLDEN / case / re.sub(r"-\?{5}-of-\d{5}$", "", manifest(case)["prefix"])


def same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return list(a.reshape(-1)) == list(b.reshape(-1))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# ----------------------------------------------------------------------------------------
# checkpoints written by ckptlib (module-scoped: built once, copied before damaging)

BIG = np.linspace(-1.0, 1.0, 5000, dtype=np.float32)
SAMPLE = {
    "dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4) / 4,
    "dense/bias": np.array([0.5, -1.25, 3.0], dtype=np.float32),
    "bf16": np.array([1.5, -2.0, np.inf, 3.140625], dtype=ml_dtypes.bfloat16),
    "weird": np.array([np.nan, np.inf, -np.inf, 1.0, -7.5, np.nan], dtype=np.float64),
    "step": np.int64(42),
    "names": np.array([b"alpha", b"\xff\x00beta", "ünï".encode()], dtype=object),
    "big": BIG,
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """One ckptlib checkpoint (prefix) with numeric, bfloat16, NaN/Inf, string and a large tensor."""
    prefix = tmp_path_factory.mktemp("sample") / "model.ckpt"
    ckptlib.save(SAMPLE, str(prefix))
    return prefix


@pytest.fixture(scope="module")
def saver_run(tmp_path_factory) -> Path:
    """A Saver directory: 4 saves with max_to_keep=2 (steps 2 and 3 kept) and an unlisted
    complete checkpoint ``model.ckpt-100`` written beside it."""
    directory = tmp_path_factory.mktemp("saver") / "run"
    saver = ckptlib.Saver(max_to_keep=2)
    state = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    for step in range(4):
        state["w"] += 1.0
        saver.save(state, str(directory / "model.ckpt"), global_step=step)
    ckptlib.save({"x": np.ones(2)}, str(directory / "model.ckpt-100"))
    return directory


@pytest.fixture
def run_copy(saver_run, tmp_path) -> Path:
    return Path(shutil.copytree(saver_run, tmp_path / "run"))


@pytest.fixture
def sample_copy(sample, tmp_path) -> Path:
    for f in sample.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / sample.name


# ----------------------------------------------------------------------------------------
# --help, --version, usage errors


HELP_WORDS = {
    None: COMMANDS,
    "ls": ["directory", "--json"],
    "inspect": ["path", "--tensor", "--all", "--stats", "--json"],
    "verify": ["path", "--json"],
    "diff": ["--atol", "--json"],
    "convert": ["src", "dst", ".npz", ".safetensors", "--json"],
}


def test_help_for_every_command_and_version():
    calls = [["--help"] if command is None else [command, "--help"] for command in HELP_WORDS]
    *helps, version = cli_many(*calls, ["--version"])
    for command, proc in zip(HELP_WORDS, helps):
        assert proc.stdout.startswith("usage: ckptlib" + ("" if command is None else f" {command}")), proc.stdout
        assert proc.stderr == ""
        assert "-h, --help" in proc.stdout
        for word in HELP_WORDS[command]:
            assert word in proc.stdout, (command, word, proc.stdout)
    assert version.stdout.strip() == f"ckptlib {ckptlib.__version__}"


USAGE_ERRORS = [
    ([], "required: command"),
    (["frob"], "invalid choice: 'frob'"),
    (["inspect"], "required: path"),
    (["diff", "a", "b", "--atol", "abc"], "invalid float value: 'abc'"),
]


def test_usage_errors_exit_2():
    """argparse's errors: a usage line, then one ``ckptlib ...: error: ...`` line; exit 2."""
    for (args, needle), proc in zip(USAGE_ERRORS, cli_many(*[args for args, _ in USAGE_ERRORS], rc=2)):
        assert proc.stdout == "", args
        assert_one_line_error(proc, needle)


def test_console_script(sample):
    """The installed ``ckptlib`` entry point (pyproject's [project.scripts]) works too."""
    candidates = [Path(sys.executable).parent / "ckptlib", Path(sys.executable).parent / "ckptlib.exe"]
    script = next((str(c) for c in candidates if c.exists()), None) or shutil.which("ckptlib")
    if script is None:
        pytest.skip("no installed `ckptlib` console script next to this Python or on PATH (pip install -e .)")
    proc = cli("verify", sample, argv0=[script])
    assert proc.stdout.strip() == f"{sample}: OK, {len(SAMPLE)} tensor(s) verified"
    assert_one_line_error(cli(argv0=[script], rc=2), "required: command")


# ----------------------------------------------------------------------------------------
# ls


def ls_rows(stdout: str) -> dict[str, dict]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["STEP", "TIME", "SIZE", "SHARDS", "STATUS", "NAME"], stdout
    rows = {}
    for line in lines[1:-1]:
        mark, rest = line[:2], line[2:]
        m = re.match(r"^\s*(\S+)\s+(-|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+(\S+ \S+)\s+(\d+)\s+(.+?)\s+(\S+)$", rest)
        assert m, line
        rows[m.group(6)] = {
            "latest": mark == "* ",
            "step": m.group(1),
            "shards": int(m.group(4)),
            "status": m.group(5),
        }
    return rows


def test_ls_saver_directory(saver_run):
    text, data = cli_many(["ls", saver_run], ["ls", saver_run, "--json"])
    rows = ls_rows(text.stdout)
    # max_to_keep=2 rotated steps 0 and 1 away; model.ckpt-100 is on disk but not in the state file
    assert rows == {
        "model.ckpt-2": {"latest": False, "step": "2", "shards": 1, "status": "complete"},
        "model.ckpt-3": {"latest": True, "step": "3", "shards": 1, "status": "complete"},
        "model.ckpt-100": {"latest": False, "step": "100", "shards": 1, "status": "complete (unlisted)"},
    }
    assert list(rows) == ["model.ckpt-2", "model.ckpt-3", "model.ckpt-100"]
    assert text.stdout.splitlines()[-1] == f"3 checkpoint(s); * = latest ({saver_run / 'model.ckpt-3'})"
    assert text.stderr == ""
    assert not list(saver_run.glob("model.ckpt-0.*")) and not list(saver_run.glob("model.ckpt-1.*"))

    data = json.loads(data.stdout, parse_constant=_no_constant)
    assert data["directory"] == str(saver_run)
    assert data["latest"] == str(saver_run / "model.ckpt-3")
    by_name = {row["name"]: row for row in data["checkpoints"]}
    assert list(by_name) == ["model.ckpt-2", "model.ckpt-3", "model.ckpt-100"]
    for name, step, listed in [("model.ckpt-2", 2, True), ("model.ckpt-3", 3, True), ("model.ckpt-100", 100, False)]:
        row = by_name[name]
        assert row["step"] == step and row["listed"] is listed and row["complete"] is True
        assert row["shards"] == 1 and row["missing_files"] == []
        assert row["prefix"] == str(saver_run / name)
        assert row["size"] == sum(f.stat().st_size for f in saver_run.glob(name + ".*"))
        assert abs(row["time"] - time.time()) < 3600
        assert row["latest"] is (name == "model.ckpt-3")


def test_ls_marks_incomplete_and_moves_latest(run_copy):
    (run_copy / "model.ckpt-3.data-00000-of-00001").unlink()
    text, data = cli_many(["ls", run_copy], ["ls", run_copy, "--json"])
    rows = ls_rows(text.stdout)
    assert rows["model.ckpt-3"]["status"] == "INCOMPLETE" and not rows["model.ckpt-3"]["latest"]
    assert rows["model.ckpt-2"]["status"] == "complete" and rows["model.ckpt-2"]["latest"]
    assert text.stdout.splitlines()[-1].endswith(f"* = latest ({run_copy / 'model.ckpt-2'})")
    assert "model.ckpt-3" in text.stderr  # the warning that the newest one is unusable
    data = json.loads(data.stdout, parse_constant=_no_constant)
    row = next(r for r in data["checkpoints"] if r["name"] == "model.ckpt-3")
    assert row["complete"] is False and row["missing_files"] == ["model.ckpt-3.data-00000-of-00001"]
    assert data["latest"] == str(run_copy / "model.ckpt-2")


def test_ls_shows_unlisted_incomplete(run_copy):
    ckptlib.save({"x": np.ones(2)}, str(run_copy / "stray"), num_shards=2)
    (run_copy / "stray.data-00001-of-00002").unlink()
    assert "stray" in ls_rows(cli("ls", run_copy).stdout)


def test_ls_golden_empty_and_missing(tmp_path):
    sharded, sharded_json, v1, empty, empty_json, missing = cli_many(
        ["ls", GOLDEN / "tf1_sharded"],
        ["ls", GOLDEN / "tf1_sharded", "--json"],
        ["ls", GOLDEN / "v1_format"],
        ["ls", tmp_path],
        ["ls", tmp_path, "--json"],
        ["ls", tmp_path / "nope"],
        rc=[0, 0, 0, 0, 0, 1],
    )
    assert ls_rows(sharded.stdout) == {
        "model.ckpt-1": {"latest": False, "step": "1", "shards": 2, "status": "complete"},
        "model.ckpt-2": {"latest": True, "step": "2", "shards": 2, "status": "complete"},
    }
    data = json.loads(sharded_json.stdout)
    assert [(r["step"], r["shards"], r["latest"]) for r in data["checkpoints"]] == [(1, 2, False), (2, 2, True)]
    assert ls_rows(v1.stdout) == {"model.ckpt": {"latest": True, "step": "-", "shards": 0, "status": "complete"}}
    assert empty.stdout == f"{tmp_path}: no checkpoints\n"
    assert json.loads(empty_json.stdout) == {"directory": str(tmp_path), "latest": None, "checkpoints": []}
    assert missing.stdout == ""
    assert_one_line_error(missing, "ckptlib ls: error:", "no such directory")


# ----------------------------------------------------------------------------------------
# inspect


def test_inspect_prefix_directory_or_any_file(sample, saver_run):
    """PATH may be the prefix, the ``.index``, a ``.data-*`` file or a directory (its latest)."""
    forms = [sample, f"{sample}.index", f"{sample}.data-00000-of-00001"]
    *procs, directory = cli_many(*[["inspect", path] for path in forms], ["inspect", saver_run])
    for form, proc in zip(forms, procs):
        rows = table(proc.stdout)
        assert sorted(rows) == sorted(SAMPLE), form
        assert rows["dense/kernel"][:2] == ["float32", "[3, 4]"]
        assert rows["bf16"][:2] == ["bfloat16", "[4]"]
        assert rows["step"][:2] == ["int64", "[]"]
        assert rows["names"][:2] == ["string", "[3]"]
        assert rows["big"][:3] == ["float32", "[5000]", "19.5 KiB"]
        assert totals(proc.stdout) == (len(SAMPLE), 2, str(sample)), form
        assert proc.stderr == ""
        assert proc.stdout == procs[0].stdout
    assert sorted(table(directory.stdout)) == ["b", "w"]
    assert totals(directory.stdout)[2] == str(saver_run / "model.ckpt-3")


def test_inspect_golden_sharded_any_file():
    """TensorFlow's sharded TF1 save, named by prefix, index, either data shard or directory."""
    paths = ["model.ckpt-2", "model.ckpt-2.index", "model.ckpt-2.data-00000-of-00002",
             "model.ckpt-2.data-00001-of-00002", "."]  # fmt: skip
    for path, proc in zip(paths, cli_many(*[["inspect", GOLDEN / "tf1_sharded" / p] for p in paths])):
        count, files, prefix = totals(proc.stdout)
        assert (count, files) == (6, 3), path
        assert os.path.realpath(prefix) == os.path.realpath(GOLDEN / "tf1_sharded" / "model.ckpt-2")
        rows = table(proc.stdout)
        assert rows["part"][3] == "- (3 slices)"
        assert {rows["h"][3], rows["scope/b"][3]} == {"1"}


def test_inspect_every_golden_case():
    """Every checkpoint TensorFlow wrote: ``inspect --stats --json`` lists the names, dtype names
    and shapes TensorFlow listed, and reads every tensor (checksums included) without an error."""
    procs = cli_many(*[["inspect", golden_prefix(case), "--stats", "--json"] for case in GOLDEN_CASES])
    for case, proc in zip(GOLDEN_CASES, procs):
        expected = manifest(case)["tensors"]
        data = json.loads(proc.stdout)  # stats of float extremes can be inf: see test_inspect_json_is_strict_json
        got = {t["name"]: (t["dtype"], t["shape"]) for t in data["tensors"]}
        assert got == {name: (item["dtype"], item["shape"]) for name, item in expected.items()}, case
        assert data["total_bytes"] == sum(t["nbytes"] for t in data["tensors"]), case
        assert all(os.path.exists(f) for f in data["files"]), case
        assert all("stats" in t for t in data["tensors"]), case
        assert proc.stderr == "", case  # no numpy warnings and no progress lines (stderr is a pipe)


def test_inspect_golden_text():
    dtypes, strings, sliced, v1, slots = cli_many(
        ["inspect", GOLDEN / "dtypes" / "ckpt", "--stats"],
        ["inspect", GOLDEN / "strings" / "ckpt.index", "--all"],
        ["inspect", GOLDEN / "sliced_savev2" / "ckpt"],
        ["inspect", GOLDEN / "v1_format"],  # the directory: its state file names the V1 file
        ["inspect", GOLDEN / "tf2_slots"],
    )
    rows = table(dtypes.stdout)
    for name in ["bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint2", "qint8", "complex128", "float4_e2m1fn"]:
        assert rows[name][0] == name, rows[name]
    assert rows["float32_3d"][:2] == ["float32", "[2, 3, 4]"]
    assert rows["bfloat16"][:3] == ["bfloat16", "[17]", "34 B"]
    assert totals(dtypes.stdout)[:2] == (33, 2)
    # every dtype, NaN payloads and float extremes included, without numpy warnings on stderr
    assert dtypes.stderr == ""
    assert value_lines(dtypes.stdout, "float32") == [
        "nan=4  inf=2  min=-3.40282e+38  max=3.40282e+38  mean=-0.00589915  std=1.3347e+38"
    ]

    rows = table(strings.stdout)
    assert rows["ünïcode/名前"][:2] == ["string", "[1]"]
    assert rows["empty_matrix"][:2] == ["string", "[3, 0]"]
    assert rows["long_70k"][:3] == ["string", "[]", "68.4 KiB"]
    assert totals(strings.stdout)[0] == 11
    assert value_lines(strings.stdout, "matrix") == ["[[b'a' b'bb' b'ccc']", " [b'' b'\\x00\\x01' b'\\xc3\\xa9']]"]
    assert value_lines(strings.stdout, "scalar") == ["b'hello, world'"]
    assert value_lines(strings.stdout, "empty_matrix") == ["[]"]

    rows = table(sliced.stdout)
    assert rows["w"] == ["float32", "[10, 3]", "120 B", "- (2 slices)"]
    assert rows["b16"][0] == "bfloat16" and rows["b16"][3] == "- (2 slices)"
    assert rows["plain"][3] == "0"

    rows = table(v1.stdout)
    assert rows["part"][:2] == ["float32", "[5, 2]"] and rows["part"][3].endswith("(2 slices)")
    assert rows["c"][0] == "complex64" and rows["scalar"][1] == "[]"
    assert totals(v1.stdout)[0] == 12 and totals(v1.stdout)[2].endswith("model.ckpt")

    rows = table(slots.stdout)
    slot = "model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"
    assert rows[slot][:2] == ["float32", "[4, 3]"]
    assert rows["_CHECKPOINTABLE_OBJECT_GRAPH"][:2] == ["string", "[]"]
    assert totals(slots.stdout)[0] == 17


def test_inspect_values(sample):
    """``--tensor NAME`` and ``--all`` print values as numpy formats them, indented under the row."""
    kernel, big, everything = cli_many(
        ["inspect", sample, "--tensor", "dense/kernel"],
        ["inspect", sample, "--tensor", "big"],
        ["inspect", sample, "--all"],
    )
    assert list(table(kernel.stdout)) == ["dense/kernel"]
    assert value_lines(kernel.stdout, "dense/kernel") == np.array2string(SAMPLE["dense/kernel"]).splitlines()
    assert totals(kernel.stdout)[0] == 1
    # a large tensor: numpy's summary with "..."
    values = value_lines(big.stdout, "big")
    assert any("..." in line for line in values), values
    assert len(values) < 20
    assert values[0].startswith("[-1.")
    assert totals(big.stdout)[0] == 1

    for name, value in SAMPLE.items():
        lines = value_lines(everything.stdout, name)
        assert lines, name
        if value.dtype != object:
            assert lines == np.array2string(np.asarray(value)).splitlines(), name
    bf = value_lines(everything.stdout, "bf16")
    assert bf == ["[1.5 -2 inf 3.14062]"]
    assert value_lines(everything.stdout, "step") == ["42"]
    assert " ".join(value_lines(everything.stdout, "names")) == "[b'alpha' b'\\xff\\x00beta' b'\\xc3\\xbcn\\xc3\\xaf']"
    assert totals(everything.stdout)[0] == len(SAMPLE)


def test_inspect_stats(sample):
    proc = cli("inspect", sample, "--stats")
    assert proc.stderr == ""  # no numpy RuntimeWarnings
    assert value_lines(proc.stdout, "weird") == ["nan=2  inf=2  min=-7.5  max=1  mean=-3.25  std=4.25"]
    assert value_lines(proc.stdout, "dense/bias")[0].startswith("nan=0  inf=0  min=-1.25  max=3")
    assert value_lines(proc.stdout, "names") == []  # no stats for strings
    assert totals(proc.stdout)[0] == len(SAMPLE)


def test_inspect_json_stats_and_values(sample):
    one, everything = cli_many(
        ["inspect", sample, "--tensor", "weird", "--stats", "--json"], ["inspect", sample, "--all", "--json"]
    )
    (row,) = json.loads(one.stdout)["tensors"]
    assert row["name"] == "weird" and row["dtype"] == "float64" and row["shape"] == [6]
    assert row["stats"] == {"nan": 2, "inf": 2, "min": -7.5, "max": 1.0, "mean": -3.25, "std": 4.25}
    data = json.loads(everything.stdout)
    values = {t["name"]: t["value"] for t in data["tensors"]}
    assert values["dense/kernel"] == SAMPLE["dense/kernel"].tolist()
    # strict JSON: non-finite values are spelled as strings
    assert values["bf16"] == [1.5, -2.0, "Infinity", 3.140625]
    assert values["weird"][1:5] == ["Infinity", "-Infinity", 1.0, -7.5]
    assert values["step"] == 42
    assert values["names"] == ["alpha", "\\xff\x00beta", "ünï"]
    assert len(values["big"]) == 5000
    assert data["prefix"] == str(sample)
    assert data["files"] == [str(sample) + ".index", str(sample) + ".data-00000-of-00001"]
    assert data["total_bytes"] == sum(t["nbytes"] for t in data["tensors"])
    assert "stats" not in data["tensors"][0]


def test_inspect_json_is_strict_json(sample):
    cli_json("inspect", sample, "--tensor", "weird")


def test_inspect_errors(sample, tmp_path):
    unknown, missing, no_state = cli_many(
        ["inspect", sample, "--tensor", "nope"],
        ["inspect", tmp_path / "nothing"],
        ["inspect", GOLDEN / "dtypes"],  # a directory without a `checkpoint` state file
        rc=1,
    )
    assert unknown.stdout == ""
    assert_one_line_error(unknown, "ckptlib inspect: error:", "'nope'", "no such tensor")
    assert_one_line_error(missing, "ckptlib inspect: error:", str(tmp_path / "nothing"))
    assert_one_line_error(no_state, "no checkpoint state file")


def _damaged_tensor(prefix: Path) -> str:
    """The one tensor ``verify`` blames (read in this process: the CLI is what is tested)."""
    with ckptlib.load_checkpoint(str(prefix)) as reader:
        (problem,) = reader.verify()
    return re.search(r"tensor '([^']+)'", str(problem)).group(1)


def test_inspect_damaged_tensor(sample_copy):
    data_file = sample_copy.with_name(sample_copy.name + ".data-00000-of-00001")
    flip_byte(data_file, data_file.stat().st_size // 2)
    damaged = _damaged_tensor(sample_copy)
    index_only, one, everything, diff = cli_many(
        ["inspect", sample_copy],  # the index alone is fine
        ["inspect", sample_copy, "--tensor", damaged],
        ["inspect", sample_copy, "--all"],
        ["diff", sample_copy, sample_copy],
        rc=[0, 1, 1, 1],
    )
    assert totals(index_only.stdout)[0] == len(SAMPLE)
    assert one.stdout == ""
    assert_one_line_error(one, str(data_file), f"tensor '{damaged}'", "checksum")
    assert_one_line_error(everything, f"tensor '{damaged}'")
    assert_one_line_error(diff, f"tensor '{damaged}'")


# ----------------------------------------------------------------------------------------
# verify


def test_verify_ok(sample, saver_run):
    prefix, directory, as_json, sharded, v1_sharded, slots = cli_many(
        ["verify", sample],
        ["verify", saver_run],
        ["verify", sample, "--json"],
        ["verify", GOLDEN / "tf1_sharded"],
        ["verify", GOLDEN / "v1_sharded"],
        ["verify", GOLDEN / "tf2_slots" / "ckpt-1.index"],
    )
    assert prefix.stdout == f"{sample}: OK, {len(SAMPLE)} tensor(s) verified\n"
    # a directory: every listed checkpoint, then the unlisted complete ones, one line each
    assert directory.stdout.splitlines() == [
        f"{saver_run / 'model.ckpt-2'}: OK, 2 tensor(s) verified",
        f"{saver_run / 'model.ckpt-3'}: OK, 2 tensor(s) verified",
        f"{saver_run / 'model.ckpt-100'}: OK, 1 tensor(s) verified",
        f"{saver_run}: OK, 3 checkpoint(s) verified",
    ]
    assert json.loads(as_json.stdout) == {"prefix": str(sample), "ok": True, "tensors": len(SAMPLE), "problems": []}
    assert sharded.stdout.splitlines() == [
        f"{GOLDEN / 'tf1_sharded' / 'model.ckpt-1'}: OK, 6 tensor(s) verified",
        f"{GOLDEN / 'tf1_sharded' / 'model.ckpt-2'}: OK, 6 tensor(s) verified",
        f"{GOLDEN / 'tf1_sharded'}: OK, 2 checkpoint(s) verified",
    ]
    assert v1_sharded.stdout.splitlines()[0].endswith(": OK, 4 tensor(s) verified")
    assert slots.stdout == f"{GOLDEN / 'tf2_slots' / 'ckpt-1'}: OK, 17 tensor(s) verified\n"
    for proc in (prefix, directory, as_json, sharded, v1_sharded, slots):
        assert proc.stderr == ""


def test_verify_flipped_data_byte(sample_copy):
    data_file = sample_copy.with_name(sample_copy.name + ".data-00000-of-00001")
    flip_byte(data_file, data_file.stat().st_size // 2)
    text, as_json = cli_many(["verify", sample_copy], ["verify", sample_copy, "--json"], rc=1)
    damaged = [line for line in text.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 1, text.stdout
    m = re.match(r"^DAMAGED  (\S+): tensor '([^']+)': checksum does not match", damaged[0])
    assert m and m.group(1) == str(data_file) and m.group(2) in SAMPLE, damaged[0]
    assert text.stdout.splitlines()[-1] == f"{sample_copy}: 1 problem(s) found"
    data = json.loads(as_json.stdout)
    assert data["ok"] is False and data["tensors"] == len(SAMPLE)
    assert len(data["problems"]) == 1 and str(data_file) in data["problems"][0]


def test_verify_flipped_index_byte(sample_copy):
    index = sample_copy.with_name(sample_copy.name + ".index")
    flip_byte(index, 5)
    text, as_json = cli_many(["verify", sample_copy], ["verify", sample_copy, "--json"], rc=1)
    assert text.stdout.startswith(f"DAMAGED  {index}: "), text.stdout
    data = json.loads(as_json.stdout)
    assert data["ok"] is False and data["problems"] and str(index) in data["problems"][0]


def test_verify_truncated_index(sample_copy):
    index = sample_copy.with_name(sample_copy.name + ".index")
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    verify, inspect, convert = cli_many(
        ["verify", sample_copy], ["inspect", sample_copy], ["convert", sample_copy, sample_copy.parent / "x.npz"], rc=1
    )
    assert verify.stdout.startswith(f"DAMAGED  {index}: "), verify.stdout
    assert verify.stdout.splitlines()[-1].endswith("1 problem(s) found")
    # the other commands refuse it with one line too
    assert_one_line_error(inspect, str(index))
    assert_one_line_error(convert, str(index))
    assert not (sample_copy.parent / "x.npz").exists()


def test_verify_missing_files(sample_copy, tmp_path):
    sample_copy.with_name(sample_copy.name + ".data-00000-of-00001").unlink()
    no_data, missing, missing_json = cli_many(
        ["verify", sample_copy], ["verify", tmp_path / "nope"], ["verify", tmp_path / "nope", "--json"], rc=1
    )
    damaged = [line for line in no_data.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == len(SAMPLE) and all("no such file" in line for line in damaged)
    for proc in (missing, missing_json):
        assert proc.stdout == ""
        assert_one_line_error(proc, "ckptlib verify: error:", str(tmp_path / "nope"))


def test_verify_damaged_golden_shard(tmp_path):
    directory = Path(shutil.copytree(GOLDEN / "tf1_sharded", tmp_path / "tf1_sharded"))
    shard = directory / "model.ckpt-2.data-00001-of-00002"
    flip_byte(shard, 0)
    latest, older = cli_many(["verify", directory], ["verify", directory / "model.ckpt-1"], rc=[1, 0])
    assert re.search(rf"^DAMAGED  {re.escape(str(shard))}: tensor '(h|scope/b)'", latest.stdout, re.M), latest.stdout
    assert older.stdout.endswith("OK, 6 tensor(s) verified\n")  # the older one is intact


# ----------------------------------------------------------------------------------------
# diff


@pytest.fixture(scope="module")
def diff_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two Saver checkpoints of one run, the second with a renamed, a reshaped, a recast and
    some changed tensors."""
    directory = tmp_path_factory.mktemp("diff")
    saver = ckptlib.Saver(max_to_keep=None)
    a = {
        "same": np.arange(4.0),
        "near": np.array([1.0, 2.0]),
        "count": np.array([1, 2], np.int64),
        "label": np.array([b"x"], dtype=object),
        "reshaped": np.zeros((2, 2)),
        "recast": np.zeros(3, np.float32),
        "nan": np.array([np.nan, 1.0]),
        "old": np.zeros(1),
    }
    b = dict(a)
    b.update(
        near=np.array([1.0, 2.25]),
        count=np.array([1, 3], np.int64),
        label=np.array([b"y"], dtype=object),
        reshaped=np.zeros(4),
        recast=np.zeros(3, np.float64),
        new=np.ones(1),
    )
    del b["old"]
    pa = saver.save(a, str(directory / "model.ckpt"), global_step=1)
    pb = saver.save(b, str(directory / "model.ckpt"), global_step=2)
    return Path(pa), Path(pb)


def test_diff(diff_pair):
    a, b = diff_pair
    plain, atol1, atol05 = cli_many(["diff", a, b], ["diff", a, b, "--atol", "1"], ["diff", a, b, "--atol", "0.5"])
    lines = plain.stdout.splitlines()
    assert "- old  (only in A)" in lines
    assert "+ new  (only in B)" in lines
    assert "~ recast  float32[3] -> float64[3]" in lines
    assert "~ reshaped  float64[2, 2] -> float64[4]" in lines
    assert "! near  values differ  max |a-b| = 0.25" in lines
    assert "! count  values differ  max |a-b| = 1" in lines
    assert "! label  values differ" in lines
    assert lines[-1] == "2 equal, 3 different, 2 changed dtype/shape, 1 only in A, 1 only in B"
    assert plain.stderr == ""

    lines = atol1.stdout.splitlines()
    assert not any(line.startswith(("! near", "! count")) for line in lines)
    assert "! label  values differ" in lines  # strings compare exactly
    assert lines[-1].startswith("4 equal, 1 different,")
    lines = atol05.stdout.splitlines()
    assert "! count  values differ  max |a-b| = 1" in lines and not any(x.startswith("! near") for x in lines)
    assert lines[-1].startswith("3 equal, 2 different,")


def test_diff_json(diff_pair):
    a, b = diff_pair
    plain, atol = cli_many(["diff", a, b, "--json"], ["diff", a, b, "--atol", "1", "--json"])
    data = json.loads(plain.stdout, parse_constant=_no_constant)
    assert data["only_in_a"] == ["old"] and data["only_in_b"] == ["new"]
    assert data["changed"] == [
        {"name": "recast", "a": {"dtype": "float32", "shape": [3]}, "b": {"dtype": "float64", "shape": [3]}},
        {"name": "reshaped", "a": {"dtype": "float64", "shape": [2, 2]}, "b": {"dtype": "float64", "shape": [4]}},
    ]
    assert data["different"] == [
        {"name": "count", "max_abs_diff": 1.0},
        {"name": "label", "max_abs_diff": None},
        {"name": "near", "max_abs_diff": 0.25},
    ]
    assert data["equal"] == ["nan", "same"]
    assert json.loads(atol.stdout)["equal"] == ["count", "nan", "near", "same"]


def test_diff_golden_and_missing(sample, tmp_path):
    steps, same, missing = cli_many(
        ["diff", GOLDEN / "tf1_sharded" / "model.ckpt-1", GOLDEN / "tf1_sharded"],
        ["diff", GOLDEN / "dtypes" / "ckpt", GOLDEN / "dtypes" / "ckpt.index"],
        ["diff", sample, tmp_path / "nope"],
        rc=[0, 0, 1],
    )
    assert steps.stdout.splitlines()[-1].endswith("0 changed dtype/shape, 0 only in A, 0 only in B")
    assert same.stdout == "33 equal, 0 different, 0 changed dtype/shape, 0 only in A, 0 only in B\n"
    assert same.stderr == ""  # NaN payloads and extremes compared without warnings
    assert_one_line_error(missing, "ckptlib diff: error:", str(tmp_path / "nope"))


# ----------------------------------------------------------------------------------------
# convert


def _read_all(prefix: Path) -> dict[str, np.ndarray]:
    with ckptlib.load_checkpoint(str(prefix)) as reader:
        return {name: np.array(reader.get_tensor(name)) for name in reader.keys_list()}


def test_convert_npz_round_trip(sample, tmp_path):
    npz = tmp_path / "model.npz"
    proc = cli("convert", sample, npz)
    assert proc.stdout == f"wrote {len(SAMPLE)} tensor(s) to {npz}\n"
    back = tmp_path / "back" / "model.ckpt"
    proc = cli("convert", npz, back)
    assert proc.stdout == f"wrote {len(SAMPLE)} tensor(s) to checkpoint {back}\n"
    original, restored = _read_all(sample), _read_all(back)
    assert set(original) == set(restored)
    for name in original:
        assert same_tensor(original[name], restored[name]), name
    assert restored["bf16"].dtype == ml_dtypes.bfloat16
    assert restored["names"].dtype == object


@pytest.fixture(scope="module")
def golden_dtypes_via_npz(tmp_path_factory) -> Path:
    """golden ``dtypes`` (every TensorFlow dtype) -> .npz -> checkpoint, through the CLI."""
    directory = tmp_path_factory.mktemp("dtypes_npz")
    cli("convert", GOLDEN / "dtypes" / "ckpt", directory / "dtypes.npz")
    cli("convert", directory / "dtypes.npz", directory / "back")
    return directory / "back"


def test_convert_golden_dtypes_npz(golden_dtypes_via_npz):
    """Every value of every dtype through .npz and back, bit for bit."""
    original, restored = _read_all(GOLDEN / "dtypes" / "ckpt"), _read_all(golden_dtypes_via_npz)
    assert set(original) == set(restored)
    for name in original:
        assert same_tensor(original[name], restored[name]), name


def test_convert_npz_keeps_quantized_dtypes(golden_dtypes_via_npz):
    def dtype_names(prefix: Path) -> dict[str, str]:
        with ckptlib.load_checkpoint(str(prefix)) as reader:
            return {name: reader.dtype_name(name) for name in reader.keys_list()}

    assert dtype_names(golden_dtypes_via_npz) == dtype_names(GOLDEN / "dtypes" / "ckpt")


NUMERIC = {k: v for k, v in SAMPLE.items() if k != "names"}


def test_convert_safetensors_round_trip(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors is not installed: .safetensors conversion untested")
    prefix = tmp_path / "numeric"
    ckptlib.save({**NUMERIC, "flags": np.array([True, False]), "i8": np.array([-3, 4], np.int8)}, str(prefix))
    st = tmp_path / "numeric.safetensors"
    assert cli("convert", prefix, st).stdout == f"wrote {len(NUMERIC) + 2} tensor(s) to {st}\n"
    back = tmp_path / "back"
    assert cli("convert", st, back).stdout == f"wrote {len(NUMERIC) + 2} tensor(s) to checkpoint {back}\n"
    original, restored = _read_all(prefix), _read_all(back)
    assert set(original) == set(restored)
    for name in original:
        assert same_tensor(original[name], restored[name]), name  # the 0-d "step" stays 0-d
    assert restored["bf16"].dtype == ml_dtypes.bfloat16


def test_convert_safetensors_refusals(sample, tmp_path):
    """Strings, and dtypes safetensors lacks (complex128, int4, ...): one line, exit 1, no file."""
    pytest.importorskip("safetensors", reason="safetensors is not installed: .safetensors conversion untested")
    strings, dtypes = cli_many(
        ["convert", sample, tmp_path / "s.safetensors"],
        ["convert", GOLDEN / "dtypes" / "ckpt", tmp_path / "d.safetensors"],
        rc=1,
    )
    assert_one_line_error(strings, "convert: error:", "tensor 'names'", "safetensors cannot hold string tensors")
    assert_one_line_error(dtypes, "ckptlib convert: error:", "safetensors cannot store these tensors")
    assert list(tmp_path.iterdir()) == []


def test_convert_errors(sample, tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all\n")
    bad_ext, array_to_array, missing, junk, no_ckpt, nul = cli_many(
        ["convert", sample, tmp_path / "out.txt"],
        ["convert", tmp_path / "junk.npz", tmp_path / "b.safetensors"],
        ["convert", tmp_path / "missing.npz", tmp_path / "ck"],
        ["convert", tmp_path / "junk.npz", tmp_path / "ck"],
        ["convert", tmp_path / "nockpt", tmp_path / "x.npz"],
        ["convert", GOLDEN / "strings" / "ckpt", tmp_path / "s.npz"],
        rc=[2, 2, 1, 1, 1, 1],
    )
    assert_one_line_error(bad_ext, "ckptlib convert: error:", "DST must end in .npz or .safetensors")
    assert_one_line_error(array_to_array, "ckptlib convert: error:", "must be a checkpoint")
    assert_one_line_error(missing, "ckptlib convert: error:", "missing.npz", "no such file")
    assert_one_line_error(junk, "ckptlib convert: error:", "junk.npz")
    assert_one_line_error(no_ckpt, "ckptlib convert: error:", "no checkpoint found")
    # .npz keeps strings as fixed-width bytes, which cannot end in NUL: refused, not truncated
    assert_one_line_error(nul, "ckptlib convert: error:", "tensor 'binary'", "NUL")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.npz"]


# ----------------------------------------------------------------------------------------
# progress: only on a terminal

MANY = GOLDEN / "many_keys" / "ckpt"


def test_no_progress_when_piped(tmp_path):
    """The long operations on 6,144 tensors with stdout and stderr both pipes: no progress, no
    carriage returns. (``inspect --stats`` on it is checked in test_inspect_every_golden_case.)"""
    calls = [["verify", MANY], ["diff", MANY, MANY], ["convert", MANY, tmp_path / "m.npz"]]
    for args, proc in zip(calls, cli_many(*calls)):
        assert "\r" not in proc.stdout and "\r" not in proc.stderr, args
        assert proc.stderr == "", args
        assert "6144" in proc.stdout, args


def test_progress_on_a_terminal():
    """Under a pseudo-terminal stderr gets ``verifying N/6144`` redrawn with ``\\r``, then cleared;
    stdout (still a pipe) gets only the verdict."""
    if sys.platform == "win32":
        pytest.skip("no pseudo-terminals on Windows")
    import pty
    import select

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckptlib", "verify", str(MANY)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=_env(),
        )
        os.close(slave)
        slave = -1
        chunks = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout = proc.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    terminal = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert stdout == f"{MANY}: OK, 6144 tensor(s) verified\n"
    assert "\rverifying " in terminal and "verifying 6144/6144" in terminal, repr(terminal)
    assert terminal.rstrip(" ").endswith("\r"), repr(terminal)  # the line is wiped at the end
