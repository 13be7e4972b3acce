"""Training-state trees: any tree saves and restores with its shape, Python types and bits.

* a property test: random trees of every supported leaf kind round-trip exactly;
* the structure record: written only when needed, hostile records are refused clearly;
* restore into trees: tuples and immutable leaves rebuilt, all or nothing, errors name paths;
* framework leaves (torch, JAX) through the generic API, each skipped where not installed.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptlib
from ckptlib.tree import STRUCTURE_KEY


class Moments(NamedTuple):
    mu: Any
    nu: Any


@dataclasses.dataclass
class TrainState:
    step: int
    params: Any
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: Any
    b: Any


@dataclasses.dataclass
class Doubling:
    a: int

    def __post_init__(self) -> None:
        self.a *= 2


def same(a: Any, b: Any, path: str = "") -> None:
    """Equal structure, equal Python types at every node, equal bits at every leaf."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        assert [type(k) for k in a] == [type(k) for k in b], path
        for k in a:
            same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}/{i}")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}/{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.dtype == object:
            assert a.tolist() == b.tolist(), path
        else:
            assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), path
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), path  # -0.0 and NaN payloads too
    else:
        assert a == b, path


# -- the property test ----------------------------------------------------------------------
NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int32, np.int64, np.uint16, np.uint64, np.bool_]
ML = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NUMERIC + ML)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    array = np.frombuffer(raw, dtype=np.uint8).view(dtype) if raw else np.zeros(0, dtype)
    if dtype == np.bool_:
        array = array.view(np.uint8) & 1
        array = array.astype(np.bool_)
    return array.reshape(shape).copy()


def numpy_scalars() -> st.SearchStrategy[np.generic]:
    return arrays().filter(lambda a: a.size > 0).map(lambda a: a.reshape(-1)[0])


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: struct.unpack("<d", struct.pack("<q", n))[0]),  # any bits
    st.complex_numbers(allow_nan=False),
    st.text(max_size=8).filter(lambda t: not any(0xD800 <= ord(c) < 0xE000 for c in t)),
    st.integers(0, 99).map(Doubling),
    st.binary(max_size=8),
    arrays(),
    numpy_scalars(),
    st.lists(st.binary(max_size=4), max_size=3).map(lambda v: np.array(v, dtype=object)),
)
KEYS = st.one_of(
    st.text(alphabet="abc_./é0", min_size=1, max_size=4).filter(lambda k: "/" not in k),
    st.integers(0, 99),
    st.integers(-(2**63), 2**63 - 1),
)


def trees(leaves: st.SearchStrategy[Any] = LEAVES) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.dictionaries(KEYS, children, max_size=4).filter(_names_distinct),
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.tuples(children, children).map(lambda t: Moments(*t)),
            st.tuples(st.integers(0, 9), children).map(lambda t: TrainState(t[0], t[1], "x")),
            st.tuples(children, children).map(lambda t: Frozen(*t)),
        ),
        max_leaves=20,
    )


def _names_distinct(d: dict[Any, Any]) -> bool:
    return len({str(k) for k in d}) == len(d)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees().filter(lambda t: isinstance(t, (dict, list, tuple, TrainState))))
def test_any_tree_round_trips_with_its_types_and_bits(tmp_path: Path, tree: Any) -> None:
    prefix = tmp_path / "m"
    ckptlib.save(tree, prefix, sync=False)
    restored = ckptlib.restore(prefix)
    if isinstance(tree, dict) and all(
        isinstance(k, str) and isinstance(v, (np.ndarray, np.generic)) for k, v in tree.items()
    ):
        # TensorFlow's own model (no record): numpy scalars come back as 0-d arrays
        tree = {k: np.asarray(v) if isinstance(v, np.generic) else v for k, v in tree.items()}
    same(tree, restored)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees().filter(lambda t: isinstance(t, (dict, list, tuple, TrainState))))
def test_any_tree_round_trips_through_an_object_graph(tmp_path: Path, tree: Any) -> None:
    """Named by object-graph keys (escaped, under ``.ATTRIBUTES``), a tree still comes back
    exactly, flat dicts of arrays included (the record is always written then)."""
    prefix = tmp_path / "m"
    ckptlib.save(tree, prefix, sync=False, object_graph=True)
    same(tree, ckptlib.restore(prefix))


def _deep(depth: int) -> Any:
    node: Any = "none"
    for _ in range(depth):
        node = ["list", [node]]
    return node


# -- fixed examples ------------------------------------------------------------------------
def test_an_optimizer_like_state_round_trips(tmp_path: Path) -> None:
    state = {
        "model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "optimizer": {
            "state": {0: {"step": np.float32(3), "exp_avg": np.ones(3)}, 1: {}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "foreach": None, "params": [0, 1], "amsgrad": False}],
        },
        "moments": Moments(np.zeros(2), (np.ones(1), None)),
        "train": TrainState(7, {"b": np.zeros(1)}, note="héllo"),
        "frozen": Frozen(1, b"raw"),
        "0": "a str key",
        5: "an int key",
    }
    prefix = ckptlib.save(state, tmp_path / "m")
    restored = ckptlib.restore(prefix)
    same(state, restored)
    assert list(restored["optimizer"]["state"]) == [0, 1]
    with ckptlib.load_checkpoint(prefix) as reader:
        assert "optimizer/state/0/exp_avg" in reader and "optimizer/param_groups/0/betas/1" in reader
        assert reader.get_tensor("train/step") == 7  # a Python int is an int64 tensor for TensorFlow


def test_int_and_str_keys_that_name_the_same_tensor_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ckptlib.InvalidTensorError, match="same name '0'"):
        ckptlib.save({0: 1, "0": 2}, tmp_path / "m")
    assert not list(tmp_path.iterdir())


def test_lists_tuples_and_empty_containers_as_the_whole_state(tmp_path: Path) -> None:
    for i, state in enumerate([[np.ones(2), 3], (), [], {"a": {}, "b": [], "c": ()}, ({"x": None},)]):
        prefix = ckptlib.save(state, tmp_path / f"m{i}")
        same(state, ckptlib.restore(prefix))


def test_a_flat_dict_of_arrays_is_written_without_a_record(tmp_path: Path) -> None:
    prefix = ckptlib.save({"a": np.ones(2), "b/c": np.float32(1)}, tmp_path / "m")
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.keys_list() == ["a", "b/c"]
    prefix = ckptlib.save({"a": np.ones(2), "n": 3}, tmp_path / "n")
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.keys_list() == [STRUCTURE_KEY, "a", "n"]


def test_unknown_dataclass_and_namedtuple_types_come_back_as_dict_and_namedtuple(tmp_path: Path) -> None:
    prefix = ckptlib.save({"m": Moments(1, 2), "t": TrainState(1, None)}, tmp_path / "m")
    with ckptlib.load_checkpoint(prefix) as reader:
        record = json.loads(reader.get_tensor(STRUCTURE_KEY).item())
    root = record["root"]
    root[2][0][1] = "nowhere:Moments"
    root[2][1][1] = "nowhere:TrainState"
    hacked = {
        name: value for name, value in ckptlib.load_checkpoint(prefix).read_all().items() if name != STRUCTURE_KEY
    }
    hacked[STRUCTURE_KEY] = np.array(json.dumps(record).encode(), dtype=object)
    writer = ckptlib.BundleWriter(tmp_path / "h")
    writer.add_all(hacked)
    writer.finish()
    with pytest.warns(UserWarning, match="nowhere:TrainState is not imported"):
        restored = ckptlib.restore(tmp_path / "h")
    assert restored["m"] == (1, 2) and restored["m"]._fields == ("mu", "nu") and type(restored["m"]) is not Moments
    assert restored["t"] == {"step": 1, "params": None, "note": ""}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON|levels deep"),
        (json.dumps({"format": "other", "version": 1, "root": "none"}).encode(), "not a ckptlib structure record"),
        (json.dumps({"format": "ckptlib.structure", "version": 9, "root": "none"}).encode(), "version 9"),
        (json.dumps({"format": "ckptlib.structure", "version": 1, "root": ["dict", ["a"], ["pickle"]]}), "unknown"),
        (json.dumps({"format": "ckptlib.structure", "version": 1, "root": ["dict", ["zz"], ["array"]]}), "lacks"),
        (json.dumps({"format": "ckptlib.structure", "version": 1, "root": ["dict", ["a"], ["str"]]}), "str leaf"),
        (
            json.dumps({"format": "ckptlib.structure", "version": 1, "root": ["dict", ["a", "a"], ["array", "array"]]}),
            "keys",
        ),
        (
            json.dumps(
                {"format": "ckptlib.structure", "version": 1, "root": ["namedtuple", "x:Y", ["import os"], ["array"]]}
            ),
            "field names",
        ),
        (json.dumps({"format": "ckptlib.structure", "version": 1, "root": _deep(300)}), "levels deep"),
    ],
)
def test_a_damaged_record_is_a_corrupt_checkpoint(tmp_path: Path, record: Any, message: str) -> None:
    raw = record if isinstance(record, bytes) else record.encode()
    writer = ckptlib.BundleWriter(tmp_path / "m")
    writer.add_all({"a": np.ones(2, np.float32), STRUCTURE_KEY: np.array(raw, dtype=object)})
    writer.finish()
    with pytest.raises(ckptlib.CorruptCheckpointError, match=message):
        ckptlib.restore(tmp_path / "m")
    target = np.zeros(2, np.float32)
    if message == "str leaf":  # a restore into arrays takes only the tensors, whatever the record calls them
        assert ckptlib.restore(tmp_path / "m", into={"a": target}).restored == ["a"] and target.all()
        return
    with pytest.raises(ckptlib.CorruptCheckpointError, match=message):
        ckptlib.restore(tmp_path / "m", into={"a": target})
    assert not target.any()


def test_tensors_the_record_does_not_name_are_reported(tmp_path: Path) -> None:
    prefix = ckptlib.save({"a": 1}, tmp_path / "m")
    values = ckptlib.load_checkpoint(prefix).read_all()
    values["extra"] = np.ones(1)
    writer = ckptlib.BundleWriter(tmp_path / "x")
    writer.add_all(values)
    writer.finish()
    with pytest.warns(UserWarning, match=r"not in the checkpoint's structure record.*extra"):
        assert ckptlib.restore(tmp_path / "x") == {"a": 1}


def test_too_deep_a_state_is_refused_with_its_path(tmp_path: Path) -> None:
    state: list[Any] = []
    state.append(state)  # a cycle
    with pytest.raises(ckptlib.InvalidStructureError, match="levels deep"):
        ckptlib.save({"loop": state}, tmp_path / "m")


def test_an_unsavable_value_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(ckptlib.InvalidTensorError, match=r"'opt/param_groups/0/fn'.*function"):
        ckptlib.save({"opt": {"param_groups": [{"fn": lambda: 0}]}}, tmp_path / "m")
    with pytest.raises(ckptlib.InvalidTensorError, match=r"dict keys must be str or int.*under 'opt'"):
        ckptlib.save({"opt": {(1, 2): 0}}, tmp_path / "m")


# -- restore into trees ---------------------------------------------------------------------
def test_restore_into_rebuilds_tuples_and_fills_arrays_in_place(tmp_path: Path) -> None:
    saved = {"m": Moments(np.arange(3.0), (np.ones(2), 5)), "f": Frozen(np.ones(1), "b"), "s": [1.5, None]}
    prefix = ckptlib.save(saved, tmp_path / "m")
    mu, inner = np.zeros(3), np.zeros(2)
    target = {"m": Moments(mu, (inner, 0)), "f": Frozen(np.zeros(1), ""), "s": [0.0, None]}
    report = ckptlib.restore(prefix, into=target)
    same(saved, report.tree)
    assert report.tree["m"].mu is mu and report.tree["m"].nu[0] is inner  # arrays filled in place
    assert report.tree is target and target["s"] == [1.5, None]  # mutable containers updated in place
    assert report.restored == ["f/a", "f/b", "m/mu", "m/nu/0", "m/nu/1", "s/0"]


def test_restore_into_is_all_or_nothing_and_names_paths(tmp_path: Path) -> None:
    prefix = ckptlib.save({"a": [np.ones(3, np.float32), np.ones(2, np.float32)], "n": 4}, tmp_path / "m")
    first, second = np.zeros(3, np.float32), np.zeros(3, np.float32)
    target = {"a": [first, second], "n": 0}
    with pytest.raises(ckptlib.ShapeMismatchError, match=r"a/1: target shape \[3\], checkpoint has \[2\]"):
        ckptlib.restore(prefix, into=target)
    assert not first.any() and target["n"] == 0
    data = tmp_path / "m.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[15] ^= 0xFF  # inside the second array
    data.write_bytes(bytes(raw))
    for strict in (True, False):
        for mmap in (True, False):
            with pytest.raises(ckptlib.ChecksumMismatchError):
                ckptlib.restore(prefix, into={"a": [first, np.zeros(2, np.float32)], "n": 0}, strict=strict, mmap=mmap)
            assert not first.any()
    with pytest.raises(ckptlib.ChecksumMismatchError):  # a partial target that takes the damaged tensor
        ckptlib.restore(prefix, into={"a": [first, np.zeros(2, np.float32)]}, strict=False)
    assert not first.any()


# -- framework leaves through the generic API -----------------------------------------------
def test_torch_tensors_of_every_kind_save_and_fill_in_place(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    weight = torch.nn.Parameter(torch.randn(3, 4))
    state = {
        "param": weight,
        "grad": torch.randn(2, requires_grad=True),
        "scalar": torch.tensor(3.0),
        "count": torch.tensor(7),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "fp8": torch.randn(4).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(4).to(torch.float8_e5m2),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
        "empty": torch.zeros(0, 3),
    }
    prefix = ckptlib.save(state, tmp_path / "m")
    restored = ckptlib.restore(prefix)

    def bits(tensor: Any) -> np.ndarray:
        tensor = tensor.detach().contiguous()
        if tensor.dtype.itemsize == 1 and tensor.dtype.is_floating_point:
            return tensor.view(torch.uint8).numpy()
        return tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()

    for name, tensor in state.items():
        assert restored[name].dtype.name == str(tensor.dtype).rpartition(".")[2], name
        assert restored[name].tobytes() == bits(tensor).tobytes() and restored[name].shape == tensor.shape, name
    targets = {name: torch.zeros_like(t.detach()) for name, t in state.items()}
    targets["param"] = torch.nn.Parameter(torch.zeros(3, 4))
    before = {name: t for name, t in targets.items()}
    report = ckptlib.restore(prefix, into=targets)
    for name, tensor in state.items():
        assert report.tree[name] is before[name]
        assert targets[name].dtype == tensor.dtype and bits(targets[name]).tobytes() == bits(tensor).tobytes(), name


def test_a_torch_mismatch_names_the_path_and_writes_nothing(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    prefix = ckptlib.save({"s": torch.tensor(3.0), "w": torch.ones(2)}, tmp_path / "m")
    target = {"s": torch.tensor(0.0), "w": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(ckptlib.DtypeMismatchError, match="w: target dtype float64, checkpoint has float32"):
        ckptlib.restore(prefix, into=target)
    assert target["s"].item() == 0.0
    target["w"] = torch.zeros(2)
    ckptlib.restore(prefix, into=target)
    assert target["s"].item() == 3.0


def test_jax_arrays_are_replaced_with_their_dtype_and_sharding(tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    state = {"w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3), "step": jnp.int32(4)}
    prefix = ckptlib.save(state, tmp_path / "m")
    target = {"w": jnp.zeros((2, 3), jnp.bfloat16), "step": jnp.int32(0)}
    report = ckptlib.restore(prefix, into=target)
    assert isinstance(report.tree["w"], jax.Array) and report.tree["w"].dtype == jnp.bfloat16
    assert report.tree["w"].sharding == target["w"].sharding
    assert bool((report.tree["w"] == state["w"]).all()) and int(report.tree["step"]) == 4
    with pytest.raises(ckptlib.DtypeMismatchError, match="w: target dtype float32"):
        ckptlib.restore(prefix, into={"w": jnp.zeros((2, 3)), "step": jnp.int32(0)})


def test_damage_to_the_record_is_reported_by_every_restore(tmp_path: Path) -> None:
    prefix = ckptlib.save({"a": np.ones(2, np.float32), "n": 3}, tmp_path / "m")
    with ckptlib.load_checkpoint(prefix) as reader:
        entry = reader.entry(STRUCTURE_KEY)
    data = tmp_path / "m.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size - 2] ^= 0x01
    data.write_bytes(bytes(raw))
    target = {"a": np.zeros(2, np.float32), "n": 0}
    for restore in (lambda: ckptlib.restore(prefix), lambda: ckptlib.restore(prefix, into=target, strict=False)):
        with pytest.raises(ckptlib.ChecksumMismatchError, match=STRUCTURE_KEY):
            restore()
    assert not target["a"].any() and target["n"] == 0


def test_torch_targets_and_values_that_cannot_work_are_refused_first(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    prefix = ckptlib.save({"a": torch.ones(2), "w": torch.ones(2, 3)}, tmp_path / "m")
    target = {"a": torch.zeros(2), "w": torch.zeros(3).expand(2, 3)}
    with pytest.raises(ckptlib.ReadOnlyTargetError, match="w: the target tensor's elements share memory"):
        ckptlib.restore(prefix, into=target)
    assert not target["a"].any()
    with pytest.raises(ckptlib.InvalidTensorError, match=r"'opt/x'.*meta device"):
        ckptlib.save({"opt": {"x": torch.empty(3, device="meta")}}, tmp_path / "n")
    with pytest.raises(ckptlib.InvalidTensorError, match=r"'e'.*no dtype for torch.float8_e8m0fnu"):
        ckptlib.save({"e": torch.ones(2).to(torch.float8_e8m0fnu)}, tmp_path / "n")


# -- targets replaced whole, and trees whose classes have constructors of their own ---------
def test_scalar_targets_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    prefix = ckptlib.save({"w": np.ones(3), "best": float("inf"), "n": 5, "s": "x", "z": 1j}, tmp_path / "m")
    w = np.zeros(3)
    cases = [
        ({"best": 0}, r"best: target is a int, checkpoint has float64"),
        ({"n": True}, r"n: target is a bool, checkpoint has int64"),
        ({"s": 0}, r"s: target is a int, checkpoint has object"),
        ({"n": "a"}, r"n: target is a str, checkpoint has int64"),
        ({"z": 0.0}, r"z: target is a float, checkpoint has complex128"),
        ({"n": np.int32(0)}, r"n: target dtype int32, checkpoint has int64"),
        ({"w": 0.0}, r"w: target is a float, checkpoint has shape \[3\]"),
    ]
    for wrong, message in cases:
        target = {"w": w, "best": 1.0, "n": 0, "s": "", "z": 0j, **wrong}
        with pytest.raises(ckptlib.RestoreMismatchError, match=message):
            ckptlib.restore(prefix, into=target)
        assert not w.any()
    target = {"w": w, "best": 1.0, "n": 0.0, "s": "", "z": 0j}  # an int widens into a float target
    ckptlib.restore(prefix, into=target)
    assert target == {"w": w, "best": float("inf"), "n": 5.0, "s": "x", "z": 1j} and w.all()
    placeholders = {"w": None, "best": None, "n": None, "s": None, "z": None}  # typed by the record
    ckptlib.restore(prefix, into=placeholders)
    assert [type(v) for v in placeholders.values()] == [np.ndarray, float, int, str, complex]


def test_two_targets_of_one_name_are_refused(tmp_path: Path) -> None:
    prefix = ckptlib.save({"c": np.ones(2), "a/b": np.ones(3)}, tmp_path / "m")
    c = np.zeros(2)
    for target in ({"c": c, "a/b": np.zeros(5), "a": {"b": np.zeros(3)}}, {"c": c, 1: np.zeros(1), "1": None}):
        with pytest.raises(ckptlib.InvalidStructureError, match="two targets of the restore have the same name"):
            ckptlib.restore(prefix, into=target)
    assert not c.any()


@dataclasses.dataclass(init=False)
class OwnInit:
    a: int

    def __init__(self, value: int) -> None:
        self.a = value + 100


@dataclasses.dataclass
class WithInitVar:
    a: int
    seed: dataclasses.InitVar[int]

    def __post_init__(self, seed: int) -> None:
        self.a += seed


class ChattyPoint(NamedTuple):
    x: int
    y: int


class SubTuple(tuple):  # type: ignore[type-arg]
    def __new__(cls, *items: Any) -> SubTuple:
        return super().__new__(cls, items)


def test_classes_are_rebuilt_without_running_their_constructors(tmp_path: Path) -> None:
    made = Doubling(2)
    assert made.a == 4
    state = {"d": made, "o": OwnInit(1), "v": WithInitVar(1, seed=5), "p": ChattyPoint(1, 2)}
    prefix = ckptlib.save(state, tmp_path / "m")
    back = ckptlib.restore(prefix)
    assert type(back["d"]) is Doubling and back["d"].a == 4  # __post_init__ did not run again
    assert type(back["o"]) is OwnInit and back["o"].a == 101
    assert type(back["v"]) is WithInitVar and back["v"].a == 6
    assert type(back["p"]) is ChattyPoint and back["p"] == (1, 2)
    target = {"d": Doubling(0), "o": OwnInit(0), "v": WithInitVar(0, 0), "p": ChattyPoint(0, 0)}
    report = ckptlib.restore(prefix, into=target)
    assert report.tree["d"].a == 4 and report.tree["p"] == (1, 2) and type(report.tree["p"]) is ChattyPoint
    sub = SubTuple(np.zeros(1), 0)
    saved = ckptlib.save({"t": SubTuple(np.ones(1), 3)}, tmp_path / "t")
    rebuilt = ckptlib.restore(saved, into={"t": sub}).tree["t"]
    assert type(rebuilt) is SubTuple and rebuilt[1] == 3 and rebuilt[0] is sub[0] and len(rebuilt) == 2


def test_string_leaves_of_numpy_types_and_int_subclasses(tmp_path: Path) -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    prefix = ckptlib.save({"s": np.str_("abc"), "b": np.bytes_(b"x\x00"), "e": Color.RED, "n": 1}, tmp_path / "m")
    assert ckptlib.restore(prefix) == {"s": "abc", "b": b"x\x00", "e": 1, "n": 1}
    with pytest.raises(ckptlib.InvalidTensorError, match="reserved"):
        ckptlib.save({STRUCTURE_KEY: np.zeros(3)}, tmp_path / "r")
    with pytest.raises(ckptlib.InvalidTensorError, match=r"'l/1'.*UTF-8 cannot encode"):
        ckptlib.save({"l": ["ok", "\udcff"]}, tmp_path / "u")
    with pytest.raises(ckptlib.InvalidTensorError, match="int dict keys must fit in 64 bits"):
        ckptlib.save({"k": {10**5000: 1}}, tmp_path / "k")
    assert not [p for p in tmp_path.iterdir() if p.name[0] in "ruk"]  # refused before any file was written


def test_torch_targets_that_cannot_change_are_refused_first(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    prefix = ckptlib.save({"a": torch.ones(2), "w": torch.arange(6.0).reshape(3, 2)}, tmp_path / "m")
    with torch.inference_mode():
        frozen = torch.zeros(3, 2)
    cases = [
        (frozen, "inference tensor"),
        (torch.zeros(4).as_strided((3, 2), (1, 1)), "share memory"),
        (torch.zeros(3, 2, device="meta"), "meta device"),
    ]
    for target, message in cases:
        a = torch.zeros(2)
        with pytest.raises(ckptlib.ReadOnlyTargetError, match=f"w: .*{message}"):
            ckptlib.restore(prefix, into={"a": a, "w": target})
        assert not a.any()
    a = torch.zeros(2)
    with pytest.raises(ckptlib.DtypeMismatchError, match=r"a: target dtype torch\.complex32 has no TensorFlow"):
        ckptlib.restore(prefix, into={"a": torch.zeros(2, dtype=torch.complex32), "w": torch.zeros(3, 2)})
    strided = torch.zeros(2, 3).t()  # non-contiguous but not overlapping: filled
    ckptlib.restore(prefix, into={"a": a, "w": strided})
    assert strided.tolist() == [[0, 1], [2, 3], [4, 5]]


def test_a_record_is_bounded_by_the_tensors_beside_it(tmp_path: Path) -> None:
    record = {"format": "ckptlib.structure", "version": 1, "root": ["dict", ["a"], ["array"]], "pad": "x" * (2 << 20)}
    writer = ckptlib.BundleWriter(tmp_path / "m")
    writer.add_all({"a": np.ones(1), STRUCTURE_KEY: np.array(json.dumps(record).encode(), dtype=object)})
    writer.finish()
    with pytest.raises(ckptlib.CorruptCheckpointError, match=r"more than the \d+ allowed beside 1 tensors"):
        ckptlib.restore(tmp_path / "m")
    types = [["namedtuple", f"gone:T{i}", [f"f{i}"], ["none"]] for i in range(1001)]
    record = {"format": "ckptlib.structure", "version": 1, "root": ["list", types]}
    writer = ckptlib.BundleWriter(tmp_path / "n")
    writer.add_all({STRUCTURE_KEY: np.array(json.dumps(record).encode(), dtype=object)})
    writer.finish()
    with pytest.raises(ckptlib.CorruptCheckpointError, match="more than 1000 namedtuple types"):
        ckptlib.restore(tmp_path / "n")
