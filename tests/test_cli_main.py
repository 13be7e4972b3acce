"""The ``ckptlib`` command called in process (``main(argv)``), where a subprocess adds nothing:
``convert --json``, string tensors on the way to ``.safetensors`` (TensorFlow 2's object
graph among them), and the ``--help`` texts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import ckptlib
from ckptlib.cli import build_parser, main

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
TF2_CASES = ["tf2_keras", "tf2_slots", "tf2_sharding_policy"]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def sample(tmp_path: Path) -> str:
    return ckptlib.save(
        {
            "w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "nan": np.array([np.nan]),
            "names": np.array([b"a", "b"], dtype=object),
        },
        tmp_path / "model.ckpt",
    )


# -- convert --json ------------------------------------------------------------------------
def test_convert_json_both_ways(sample: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz = tmp_path / "m.npz"
    code, out, err = run(capsys, "convert", sample, npz, "--json")
    assert code == 0 and err == ""
    assert strict_json(out) == {
        "source": sample,
        "destination": str(npz),
        "format": "npz",
        "tensors": 3,
        "skipped": [],
    }
    back = tmp_path / "back"
    code, out, _ = run(capsys, "convert", npz, back, "--json")
    assert code == 0
    assert strict_json(out) == {
        "source": str(npz),
        "destination": str(back),
        "format": "checkpoint",
        "tensors": 3,
        "skipped": [],
    }
    assert sorted(ckptlib.restore(back)) == ["names", "nan", "w"]


# -- strings and .safetensors ----------------------------------------------------------------
@pytest.mark.parametrize("case", TF2_CASES)
def test_a_tf2_checkpoint_converts_to_safetensors_without_its_object_graph(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    safetensors = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")
    prefix = GOLDEN / case / "ckpt-1"
    st = tmp_path / "weights.safetensors"
    code, out, err = run(capsys, "convert", prefix, st, "--json")
    assert code == 0, err
    assert err == "ckptlib convert: warning: left out 1 string tensor(s): _CHECKPOINTABLE_OBJECT_GRAPH\n"
    original = ckptlib.restore(prefix)
    report = strict_json(out)
    assert report["skipped"] == ["_CHECKPOINTABLE_OBJECT_GRAPH"] and report["tensors"] == len(original) - 1
    written = safetensors.load_file(str(st))
    assert sorted(written) == sorted(set(original) - {"_CHECKPOINTABLE_OBJECT_GRAPH"})
    for name, value in written.items():
        assert value.dtype == original[name].dtype and value.tobytes() == original[name].tobytes(), name


def test_other_string_tensors_need_skip_strings(
    sample: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    st = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "convert", sample, st)
    assert code == 1 and out == "" and not st.exists()
    assert "tensor 'names': safetensors cannot hold string tensors (1 here: names); --skip-strings" in err
    code, out, err = run(capsys, "convert", sample, st, "--skip-strings")
    assert code == 0 and out == f"wrote 2 tensor(s) to {st}\n"
    assert err == "ckptlib convert: warning: left out 1 string tensor(s): names\n"


# -- --help ------------------------------------------------------------------------------------
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_describes_every_argument_and_the_exit_status() -> None:
    for name, parser in subcommands().items():
        for action in parser._actions:
            assert action.help, (name, action.dest)
        assert "Exit status: 0" in parser.format_help(), name


def test_help_shows_the_atol_default_and_that_diff_exits_0_either_way() -> None:
    text = " ".join(subcommands()["diff"].format_help().split())
    assert "(default: 0.0, exact)" in text
    assert "Exit status: 0 when both checkpoints were read, whether or not they differ" in text
