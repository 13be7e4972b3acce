"""``ckptlib.torch`` with real torch: what ``state`` gathers, what ``restore`` and ``load`` give
back (bit for bit, types kept), that a damaged or ill-fitting checkpoint changes nothing, and
that a resumed run computes the very losses of an uninterrupted one."""

from __future__ import annotations

import copy
import gc
import os
import random
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckptlib  # noqa: E402
import ckptlib.torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------------
def mlp(seed: int = 0, hidden: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.25), nn.Linear(hidden, 2)
    )


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, betas=(0.8, 0.9), amsgrad=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9, nesterov=True),
}


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3, scheduler=None) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def trained(name: str = "adamw", seed: int = 0, steps: int = 3):
    model = mlp(seed)
    optimizer = OPTIMIZERS[name](model.parameters())
    train(model, optimizer, steps)
    return model, optimizer


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a, b, path: str = "") -> None:
    """Equal structure, container and leaf types, and tensor dtypes, shapes and bits."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{path}: {a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}"
        assert bits(a) == bits(b), f"{path}: values differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Deep copies of both state dicts, to compare with later."""
    return copy.deepcopy(dict(model.state_dict())), copy.deepcopy(optimizer.state_dict())


def flip_a_byte(prefix: str) -> None:
    (data,) = Path(prefix).parent.glob(Path(prefix).name + ".data-*")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))


# -- state -----------------------------------------------------------------------------------
def test_state_holds_only_the_keys_given():
    model, optimizer = trained()
    assert ckptlib.torch.state() == {}
    tree = ckptlib.torch.state(model=model, step=7, note="hi")
    assert list(tree) == ["model", "step", "note"]
    assert tree["step"] == 7 and list(tree["model"]) == list(model.state_dict())
    tree = ckptlib.torch.state(optimizer=optimizer, rng=True)
    assert list(tree) == ["optimizer", "rng"]
    assert set(tree["rng"]) >= {"torch", "python", "numpy"}


def test_rng_states_are_compact_arrays():
    rng = ckptlib.torch.state(rng=True)["rng"]
    assert rng["python"]["state"].dtype == np.uint32 and rng["python"]["state"].shape == (625,)
    assert rng["numpy"]["state"]["key"].dtype == np.uint32 and rng["numpy"]["state"]["key"].shape == (624,)
    assert rng["torch"].dtype == torch.uint8


def test_import_ckptlib_does_not_import_torch():
    code = "import sys, ckptlib; assert 'torch' not in sys.modules and 'ckptlib.torch' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_model_and_optimizer_round_trip(tmp_path, name):
    """Model (BatchNorm's 0-d num_batches_tracked included) and optimizer state (int keys,
    tuples, None, 0-d steps) come back bit for bit, and both go on training identically."""
    model, optimizer = trained(name)
    prefix = ckptlib.save(ckptlib.torch.state(model=model, optimizer=optimizer, step=3), str(tmp_path / "ck"))
    fresh_model = mlp(seed=1)
    fresh_optimizer = OPTIMIZERS[name](fresh_model.parameters())
    tree = ckptlib.torch.restore(prefix, model=fresh_model, optimizer=fresh_optimizer)
    assert tree["step"] == 3 and type(tree["step"]) is int
    assert_same(dict(fresh_model.state_dict()), dict(model.state_dict()))
    assert_same(fresh_optimizer.state_dict(), optimizer.state_dict())
    torch.manual_seed(5)
    expected = train(model, optimizer)
    torch.manual_seed(5)
    assert train(fresh_model, fresh_optimizer) == expected
    assert_same(dict(fresh_model.state_dict()), dict(model.state_dict()))


@pytest.fixture
def read_buffers(monkeypatch):
    """Weak references to the buffers every ``ckptlib.restore`` call reads a checkpoint into."""
    refs = []
    real = ckptlib.restore

    def spy(*args, **kwargs):
        tree = real(*args, **kwargs)
        for array in arrays_in(tree):
            while isinstance(array.base, np.ndarray):
                array = array.base
            refs.append(weakref.ref(array))
        return tree

    monkeypatch.setattr(ckptlib, "restore", spy)
    return refs


def arrays_in(tree):
    if isinstance(tree, np.ndarray):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from arrays_in(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from arrays_in(value)


@pytest.mark.parametrize("mmap", [False, True])
def test_nothing_restored_keeps_the_read_buffer(tmp_path, read_buffers, mmap):
    """Loaded optimizer state and the returned tree (with a part not loaded and an extra
    tensor) hold memory of their own: the buffer (or map) the checkpoint was read into goes."""
    model, optimizer = trained("adam")
    tree = ckptlib.torch.state(model=model, optimizer=optimizer, step=2, rng=True, extra=torch.arange(3.0))
    prefix = ckptlib.save(tree, str(tmp_path / "ck"))
    fresh = mlp(seed=1)
    fresh_optimizer = OPTIMIZERS["adam"](fresh.parameters())
    restored = ckptlib.torch.restore(prefix, optimizer=fresh_optimizer, rng=True, mmap=mmap)
    gc.collect()
    assert read_buffers and all(ref() is None for ref in read_buffers)
    assert_same(fresh_optimizer.state_dict(), optimizer.state_dict())
    assert_same(restored["model"], dict(model.state_dict()))
    assert_same(restored["extra"], torch.arange(3.0))


def test_optimizer_state_follows_the_parameters_dtype(tmp_path):
    """As torch's own ``load_state_dict`` does: float state takes its parameter's dtype."""
    _, optimizer = trained("adam")
    prefix = ckptlib.save(ckptlib.torch.state(optimizer=optimizer), str(tmp_path / "ck"))
    double = mlp().double()
    double_optimizer = OPTIMIZERS["adam"](double.parameters())
    ckptlib.torch.restore(prefix, optimizer=double_optimizer)
    state = double_optimizer.state_dict()["state"][0]
    assert state["exp_avg"].dtype == torch.float64 and state["step"].dtype == torch.float32


def test_scheduler_and_scaler_round_trip(tmp_path):
    model, optimizer = trained()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    train(model, optimizer, 5, scheduler)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=123.0)
    tree = ckptlib.torch.state(scheduler=scheduler, scaler=scaler)
    prefix = ckptlib.save(tree, str(tmp_path / "ck"))
    other_optimizer = OPTIMIZERS["adamw"](mlp().parameters())
    other_scheduler = torch.optim.lr_scheduler.StepLR(other_optimizer, step_size=7)
    other_scaler = torch.amp.GradScaler("cpu")
    ckptlib.torch.restore(prefix, scheduler=other_scheduler, scaler=other_scaler)
    assert other_scheduler.state_dict() == scheduler.state_dict()
    assert other_scaler.state_dict() == scaler.state_dict()
    assert other_scaler.get_scale() == 123.0


SCHEDULERS = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "plateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1),  # best: inf
    "one-cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20),
    "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step),  # lr_lambdas: [None]
    "warm-restarts": lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3),
    "sequential": lambda opt: torch.optim.lr_scheduler.SequentialLR(
        opt,
        [torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=2), torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)],
        milestones=[2],
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_schedulers_round_trip(tmp_path, name):
    """Each scheduler's state (infinities, None, nested schedulers' states) comes back equal,
    and the resumed schedule gives the same learning rates."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = SCHEDULERS[name](optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step(1.0) if name == "plateau" else scheduler.step()
    prefix = ckptlib.save(ckptlib.torch.state(optimizer=optimizer, scheduler=scheduler), str(tmp_path / "ck"))
    other_optimizer = torch.optim.SGD(mlp().parameters(), lr=0.1)
    other = SCHEDULERS[name](other_optimizer)
    ckptlib.torch.restore(prefix, optimizer=other_optimizer, scheduler=other)
    assert other.state_dict() == scheduler.state_dict()
    for sched, opt in ((scheduler, optimizer), (other, other_optimizer)):
        opt.step()
        sched.step(1.0) if name == "plateau" else sched.step()
    assert other_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_rng_round_trip(tmp_path):
    """torch's, Python's and numpy's generators continue where the checkpoint left them
    (with the cached Gaussians of ``random.gauss`` and numpy's legacy normal)."""
    random.gauss(0, 1)
    np.random.standard_normal()
    prefix = ckptlib.save(ckptlib.torch.state(rng=True), str(tmp_path / "ck"))

    def draws():
        return torch.rand(4).tolist(), [random.gauss(0, 1), random.random()], np.random.standard_normal(3).tolist()

    expected = draws()
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    ckptlib.torch.restore(prefix, rng=True)
    assert draws() == expected


def test_load_gives_torch_tensors_of_every_kind(tmp_path):
    """bfloat16, float8, 0-d, non-contiguous, Parameter and requires_grad leaves load as plain
    CPU tensors of the same dtype, shape and bits; non-tensor leaves keep their types."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    leaves = {
        "bf16": base.to(torch.bfloat16),
        "f8e4m3": base.to(torch.float8_e4m3fn),
        "f8e5m2": base.to(torch.float8_e5m2),
        "f16": base.half(),
        "zero_d": torch.tensor(3.5),
        "zero_d_int": torch.tensor(7),
        "transposed": base.t(),
        "strided": base[:, ::2],
        "parameter": nn.Parameter(base.clone()),
        "grad": base.clone().requires_grad_(),
        "bool": base > 0.5,
        "uint8": torch.arange(5, dtype=torch.uint8),
        "int64": torch.tensor([-(2**62), 2**62]),
        "complex": torch.tensor([1 + 2j], dtype=torch.complex64),
    }
    tree = {"t": leaves, "ids": {0: "first", 1: None}, "pair": (1, 2.5), "flag": True}
    prefix = ckptlib.save(tree, str(tmp_path / "ck"))
    loaded = ckptlib.torch.load(prefix)
    for name, tensor in leaves.items():
        got = loaded["t"][name]
        assert type(got) is torch.Tensor and not got.requires_grad, name
        assert_same(got, tensor.detach().clone(), name)
    assert loaded["ids"] == {0: "first", 1: None}
    assert loaded["pair"] == (1, 2.5) and type(loaded["pair"]) is tuple
    assert loaded["flag"] is True


def test_load_with_mmap(tmp_path):
    model, _ = trained()
    prefix = ckptlib.save(ckptlib.torch.state(model=model), str(tmp_path / "ck"))
    loaded = ckptlib.torch.load(prefix, mmap=True)
    assert_same(loaded["model"], dict(model.state_dict()))


def test_restore_from_a_directory_takes_the_latest(tmp_path):
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2)
    model, optimizer = trained()
    for step in range(3):
        train(model, optimizer, 1)
        manager.save(ckptlib.torch.state(model=model, optimizer=optimizer, step=step))
    fresh = mlp(seed=3)
    tree = ckptlib.torch.restore(tmp_path, model=fresh, optimizer=OPTIMIZERS["adamw"](fresh.parameters()))
    assert tree["step"] == 2
    assert_same(dict(fresh.state_dict()), dict(model.state_dict()))


def test_restore_returns_live_state_and_the_rest_as_stored(tmp_path):
    """The parts loaded come back as the live objects hold them; the rest (here the optimizer,
    not asked for, and an extra tensor) as stored."""
    model, optimizer = trained()
    tree = ckptlib.torch.state(model=model, optimizer=optimizer, step=2, rng=True, extra=torch.arange(3.0))
    prefix = ckptlib.save(tree, str(tmp_path / "ck"))
    fresh = mlp(seed=1)
    restored = ckptlib.torch.restore(prefix, model=fresh, rng=True)
    assert restored["model"]["0.weight"].data_ptr() == fresh[0].weight.data_ptr()
    assert_same(restored["optimizer"], optimizer.state_dict())
    assert_same(restored["extra"], torch.arange(3.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_model_optimizer_and_rng(tmp_path):
    """A model on the GPU: saved from the device, restored onto it (optimizer state too), and
    the CUDA generator continues where it was saved."""
    model = mlp().cuda()
    optimizer = OPTIMIZERS["adam"](model.parameters())
    model(torch.randn(16, 4, device="cuda")).pow(2).mean().backward()
    optimizer.step()
    prefix = ckptlib.save(ckptlib.torch.state(model=model, optimizer=optimizer, rng=True), str(tmp_path / "ck"))
    expected = torch.rand(3, device="cuda")
    fresh = mlp(seed=1).cuda()
    fresh_optimizer = OPTIMIZERS["adam"](fresh.parameters())
    ckptlib.torch.restore(prefix, model=fresh, optimizer=fresh_optimizer, rng=True)
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    assert_same(dict(fresh.state_dict()), dict(model.state_dict()))
    assert_same(fresh_optimizer.state_dict(), optimizer.state_dict())
    for entries in fresh_optimizer.state.values():
        assert entries["exp_avg"].device.type == "cuda"


# -- all or nothing --------------------------------------------------------------------------
def live_objects():
    model, optimizer = trained("adam", seed=4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    return model, optimizer, scheduler


def saved_elsewhere(tmp_path, **kwargs) -> str:
    model, optimizer = trained("adam", seed=0, steps=5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    tree = ckptlib.torch.state(model=model, optimizer=optimizer, scheduler=scheduler, step=5, rng=True)
    return ckptlib.save({**tree, **kwargs}, str(tmp_path / "ck"))


def assert_untouched(model, optimizer, scheduler, before) -> None:
    model_state, optimizer_state, scheduler_state, rng_state = before
    assert_same(dict(model.state_dict()), model_state)
    assert_same(optimizer.state_dict(), optimizer_state)
    assert scheduler.state_dict() == scheduler_state
    assert bits(torch.get_rng_state()) == bits(rng_state)


def state_of(model, optimizer, scheduler):
    return (*snapshot(model, optimizer), copy.deepcopy(scheduler.state_dict()), torch.get_rng_state())


def test_a_damaged_checkpoint_changes_nothing(tmp_path):
    prefix = saved_elsewhere(tmp_path)
    flip_a_byte(prefix)
    model, optimizer, scheduler = live_objects()
    before = state_of(model, optimizer, scheduler)
    with pytest.raises(ckptlib.CorruptCheckpointError):
        ckptlib.torch.restore(prefix, model=model, optimizer=optimizer, scheduler=scheduler, rng=True)
    assert_untouched(model, optimizer, scheduler, before)


def test_a_shape_mismatch_changes_nothing_and_names_the_tensor(tmp_path):
    prefix = saved_elsewhere(tmp_path)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, 3))
    optimizer = OPTIMIZERS["adam"](model.parameters())
    train(model, optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    before = state_of(model, optimizer, scheduler)
    with pytest.raises(ckptlib.ShapeMismatchError) as info:
        ckptlib.torch.restore(prefix, model=model, optimizer=optimizer, scheduler=scheduler, rng=True)
    message = str(info.value)
    assert "model/4.weight: target shape [3, 8], checkpoint has [2, 8]" in message
    assert "model/4.bias" in message and "optimizer/state/4/exp_avg" in message
    assert_untouched(model, optimizer, scheduler, before)


def test_a_dtype_mismatch_changes_nothing(tmp_path):
    prefix = saved_elsewhere(tmp_path)
    model, optimizer, scheduler = live_objects()
    model[0].double()
    before = state_of(model, optimizer, scheduler)
    with pytest.raises(ckptlib.DtypeMismatchError, match=r"model/0\.weight: target dtype float64"):
        ckptlib.torch.restore(prefix, model=model, optimizer=optimizer, scheduler=scheduler, rng=True)
    assert_untouched(model, optimizer, scheduler, before)


def test_a_target_that_cannot_be_written_changes_nothing(tmp_path):
    """A buffer whose elements share memory (``expand``) is refused before anything is loaded."""
    prefix = saved_elsewhere(tmp_path)
    model, optimizer, scheduler = live_objects()
    model[1].running_mean = torch.zeros(1).expand(8)
    before = state_of(model, optimizer, scheduler)
    with pytest.raises(ckptlib.RestoreMismatchError, match=r"model/1\.running_mean: the target's elements share"):
        ckptlib.torch.restore(prefix, model=model, optimizer=optimizer, scheduler=scheduler, rng=True)
    assert_untouched(model, optimizer, scheduler, before)


def test_optimizer_groups_that_differ_change_nothing(tmp_path):
    prefix = saved_elsewhere(tmp_path)
    model, _, _ = live_objects()
    optimizer = torch.optim.Adam([{"params": model[0].parameters()}, {"params": model[4].parameters()}])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    before = state_of(model, optimizer, scheduler)
    with pytest.raises(ckptlib.RestoreMismatchError, match="optimizer/param_groups: group sizes"):
        ckptlib.torch.restore(prefix, model=model, optimizer=optimizer, scheduler=scheduler)
    assert_untouched(model, optimizer, scheduler, before)


def test_strict_wants_every_key_and_every_part(tmp_path):
    model, _ = trained()
    prefix = ckptlib.save(ckptlib.torch.state(model=model, step=1), str(tmp_path / "ck"))
    bigger = mlp()
    bigger.register_buffer("extra", torch.zeros(2))
    optimizer = OPTIMIZERS["adamw"](bigger.parameters())
    before = copy.deepcopy(dict(bigger.state_dict()))
    with pytest.raises(ckptlib.RestoreMismatchError) as info:
        ckptlib.torch.restore(prefix, model=bigger, optimizer=optimizer)
    assert "model/extra: missing from the checkpoint" in str(info.value)
    assert "optimizer: missing from the checkpoint" in str(info.value)
    assert_same(dict(bigger.state_dict()), before)
    ckptlib.torch.restore(prefix, model=bigger, optimizer=optimizer, strict=False)
    assert_same({k: v for k, v in bigger.state_dict().items() if k != "extra"}, dict(model.state_dict()))


# -- resuming --------------------------------------------------------------------------------
def run_epochs(directory: Path, epochs: int, restore_rng: bool = True) -> list[float]:
    """A small deterministic training job (shuffle and dropout draw from the global RNG)
    that resumes from ``directory``'s latest checkpoint and saves every epoch."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 4, generator=gen), torch.randn(256, 2, generator=gen)
    model = mlp(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    manager = ckptlib.CheckpointManager(directory, max_to_keep=2)
    start, losses = 0, []
    if manager.latest_checkpoint:
        torch.manual_seed(12345)  # whatever the process did before must not matter
        objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
        tree = ckptlib.torch.restore(manager.latest_checkpoint, **objects, rng=restore_rng)
        start, losses = tree["step"], list(tree["losses"])
    for epoch in range(start, epochs):
        for batch in torch.randperm(len(x)).split(32):
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        tree = ckptlib.torch.state(model=model, optimizer=optimizer, scheduler=scheduler, step=epoch + 1, rng=True)
        manager.save({**tree, "losses": losses})
    return losses


@pytest.fixture
def deterministic():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


def test_resumed_run_gives_bit_identical_losses(tmp_path, deterministic):
    uninterrupted = run_epochs(tmp_path / "straight", 6)
    assert len(uninterrupted) == 6
    run_epochs(tmp_path / "resumed", 3)
    assert run_epochs(tmp_path / "resumed", 6) == uninterrupted
    # The RNG matters: resumed without its state, the shuffle and dropout differ.
    run_epochs(tmp_path / "no-rng", 3)
    assert run_epochs(tmp_path / "no-rng", 6, restore_rng=False)[3:] != uninterrupted[3:]
