"""Checkpoints on S3, end to end, against a real S3 server (moto in a subprocess, see
``s3_server.py``): saving, rotating and restoring through ``Saver`` and
``CheckpointManager``; files byte-identical to local ones and readable by TensorFlow; a save
killed mid-upload and its repair; two savers sharing a directory; ranged lazy reads and
their request and byte costs; injected faults; and a reading side that never writes.

Costs are measured at a counting proxy in front of the server (``s3_server.FaultProxy``),
through a store registered for ``s3://`` for the test (``proxied`` fixture).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ckptlib
from ckptlib.store import register
from ckptlib.store.remote import TAIL_BYTES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every test here ends within this many seconds, or fails (an alarm in the main thread).
TEST_LIMIT_S = 60


@pytest.fixture(autouse=True)
def _bounded():
    """Fail a test that runs past ``TEST_LIMIT_S`` instead of hanging the suite."""

    def expire(signum, frame):
        raise TimeoutError(f"test ran past {TEST_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- helpers


def _client(endpoint: str):
    import boto3
    from s3_server import TEST_ENV

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def names_in(endpoint: str, directory: str) -> set[str]:
    """Names of the objects directly under ``directory`` (an ``s3://`` URL), listed by boto3."""
    bucket, key = _split(directory)
    prefix = key.rstrip("/") + "/"
    pages = _client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", [])}


def fetch(endpoint: str, url: str) -> bytes:
    """An object's bytes, by boto3."""
    bucket, key = _split(url)
    return _client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def unfinished_under(endpoint: str, directory: str) -> list[str]:
    """Keys of the incomplete multipart uploads under ``directory``."""
    from s3_server import unfinished_uploads

    _, key = _split(directory)
    return [k for k in unfinished_uploads(endpoint, directory) if k.startswith(key.rstrip("/") + "/")]


def state_tree(step: int) -> dict:
    """A nested training state of several dtypes, a string and an int key; values depend on ``step``."""
    rng = np.random.default_rng(step)
    return {
        "model": {
            "dense": {"kernel": rng.standard_normal((8, 4)).astype(np.float32), "bias": np.full(4, step, np.float64)},
            "layers": [np.arange(6, dtype=np.int64).reshape(2, 3) * step, np.array([True, step % 2 == 0])],
        },
        "optimizer": {0: np.array(step * 10, np.int32), 1: rng.standard_normal(5).astype(np.float16)},
        "name": f"run at step {step}",
        "step": np.array(step, np.int64),
    }


def assert_tree_equal(got, want) -> None:
    assert type(got) is type(want) or isinstance(want, np.ndarray)
    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            assert_tree_equal(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_tree_equal(a, b)
    elif isinstance(want, np.ndarray):
        got = np.asarray(got)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    else:
        assert got == want


def bundle_names(name: str, num_shards: int = 1) -> set[str]:
    return {f"{name}.index", *(f"{name}.data-{i:05d}-of-{num_shards:05d}" for i in range(num_shards))}


@pytest.fixture
def proxied(s3_proxy):
    """``s3://`` routed through the counting, fault-injecting proxy for the test, with small
    multipart parts and few, quick retries (so injected failures end fast); the proxy."""
    from s3_server import TEST_PART_BYTES, make_store

    store = make_store(
        s3_proxy.endpoint,
        config_kwargs={
            "connect_timeout": 2,
            "read_timeout": 4,
            "retries": {"mode": "standard", "total_max_attempts": 3},
            "max_pool_connections": 32,
        },
    )
    store.part_bytes = TEST_PART_BYTES
    register("s3", store)
    try:
        yield s3_proxy
    finally:
        register("s3", None)


@pytest.fixture
def small_parts(s3_endpoint):
    """``s3://`` straight to the server, in multipart parts of ``TEST_PART_BYTES``."""
    from s3_server import TEST_PART_BYTES, make_store

    store = make_store(s3_endpoint)
    store.part_bytes = TEST_PART_BYTES
    register("s3", store)
    try:
        yield store
    finally:
        register("s3", None)


# --- 1. save, rotate, restore


def test_saver_rotates_and_restores_over_s3(s3_endpoint, s3_bucket):
    """Five Saver saves with max_to_keep=2 leave exactly steps 4 and 5 in the bucket, the state
    file lists them, and latest_checkpoint, restore(dir) and restore(prefix, into=...) give
    step 5's values (filled in place into numpy targets)."""
    run = f"{s3_bucket}/run"
    saver = ckptlib.Saver(max_to_keep=2)
    for step in range(1, 6):
        assert saver.save(state_tree(step), f"{run}/model.ckpt", global_step=step) == f"{run}/model.ckpt-{step}"

    assert names_in(s3_endpoint, run) == {"checkpoint"} | bundle_names("model.ckpt-4") | bundle_names("model.ckpt-5")
    state = ckptlib.get_checkpoint_state(run)
    assert state.model_checkpoint_path == f"{run}/model.ckpt-5"
    assert list(state.all_model_checkpoint_paths) == [f"{run}/model.ckpt-4", f"{run}/model.ckpt-5"]
    assert ckptlib.latest_checkpoint(run) == f"{run}/model.ckpt-5"
    assert_tree_equal(ckptlib.restore(run), state_tree(5))
    assert_tree_equal(ckptlib.restore(f"{run}/model.ckpt-4"), state_tree(4))

    target = state_tree(0)
    kernel = target["model"]["dense"]["kernel"]
    report = ckptlib.restore(f"{run}/model.ckpt-5", into=target)
    assert not report.missing and not report.unexpected
    assert report.tree["model"]["dense"]["kernel"] is kernel  # filled in place
    assert_tree_equal(target, state_tree(5))


def test_checkpoint_manager_rotates_and_restores_over_s3(s3_endpoint, s3_bucket):
    """CheckpointManager(max_to_keep=2) over five saves keeps ckpt-4 and ckpt-5 only, lists
    them in the state file, and a new manager on the directory restores step 5."""
    run = f"{s3_bucket}/run"
    manager = ckptlib.CheckpointManager(run, max_to_keep=2)
    for step in range(1, 6):
        assert manager.save(state_tree(step)) == f"{run}/ckpt-{step}"

    assert names_in(s3_endpoint, run) == {"checkpoint"} | bundle_names("ckpt-4") | bundle_names("ckpt-5")
    state = ckptlib.get_checkpoint_state(run)
    assert list(state.all_model_checkpoint_paths) == [f"{run}/ckpt-4", f"{run}/ckpt-5"]
    assert ckptlib.latest_checkpoint(run) == f"{run}/ckpt-5"
    again = ckptlib.CheckpointManager(run, max_to_keep=2)
    assert again.latest_checkpoint == f"{run}/ckpt-5"
    assert again.checkpoints == [f"{run}/ckpt-4", f"{run}/ckpt-5"]
    target = state_tree(0)
    again.restore(target)
    assert_tree_equal(target, state_tree(5))
    assert_tree_equal(ckptlib.restore(run), state_tree(5))


# --- 2. the same bytes as a local save, and TensorFlow reads them


@pytest.mark.parametrize("num_shards", [1, 3])
def test_s3_files_equal_local_files_byte_for_byte(s3_endpoint, s3_bucket, small_parts, tmp_path, num_shards):
    """The same state saved to S3 (in small multipart parts) and to a local directory gives
    the same files, each downloaded object equal to the local file byte for byte; and
    TensorFlow's own reader, given the downloaded copy, reads every tensor as ckptlib does."""
    from s3_server import TEST_PART_BYTES

    tree = {**state_tree(3), "big": np.arange(3 * TEST_PART_BYTES // 8 + 5, dtype=np.float64)}  # multipart
    remote = ckptlib.save(tree, f"{s3_bucket}/run/model.ckpt", num_shards=num_shards)
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    ckptlib.save(tree, str(local_dir / "model.ckpt"), num_shards=num_shards)

    local_names = set(os.listdir(local_dir)) - {".ckptlib-saves.lock"}  # the local store's save lock
    assert local_names == bundle_names("model.ckpt", num_shards)
    assert names_in(s3_endpoint, f"{s3_bucket}/run") == local_names
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in sorted(local_names):
        data = fetch(s3_endpoint, f"{s3_bucket}/run/{name}")
        assert data == (local_dir / name).read_bytes(), name
        (copy / name).write_bytes(data)

    try:
        import tensorflow as tf
    except ImportError:
        pytest.skip("tensorflow is not importable: the TensorFlow read of the S3 copy is not checked")
    tf_reader = tf.train.load_checkpoint(str(copy / "model.ckpt"))
    with ckptlib.load_checkpoint(remote) as reader:
        ours = reader.read_all(reader.keys_list())
    assert set(tf_reader.get_variable_to_shape_map()) == set(ours)
    for key, value in ours.items():
        theirs = tf_reader.get_tensor(key)
        if value.dtype.kind == "O":
            assert [bytes(v) for v in np.ravel(theirs)] == [bytes(v) for v in np.ravel(value)], key
        else:
            np.testing.assert_array_equal(theirs, value, err_msg=key)
            assert np.asarray(theirs).dtype == value.dtype, key


# --- 5. lazy reads: ranged GETs of what is asked, and a restore reads each byte once


def test_lazy_reads_fetch_little_and_restore_fetches_each_byte_once(s3_endpoint, s3_bucket, proxied):
    """Opening a checkpoint of 2,000 small tensors and an 8 MB one, and reading one small
    tensor, costs a few requests and a small fraction of the checkpoint's bytes; a whole
    restore fetches about every byte once."""
    proxy = proxied
    tree = {
        "small": {f"t{i:04d}": np.full(4, i, np.float32) for i in range(2000)},
        "big": np.arange(1 << 20, dtype=np.float64),  # 8 MiB
    }
    prefix = ckptlib.save(tree, f"{s3_bucket}/run/model.ckpt")
    sizes = {name: len(fetch(s3_endpoint, f"{s3_bucket}/run/{name}")) for name in bundle_names("model.ckpt")}
    total = sum(sizes.values())

    proxy.reset()
    with ckptlib.load_checkpoint(prefix) as reader:
        value = reader.get_tensor("small/t1234")
    requests, fetched = proxy.counts()
    np.testing.assert_array_equal(value, np.full(4, 1234, np.float32))
    # load_checkpoint: is the prefix a directory (1 list), does its index exist (1 HEAD), the
    # index's tail (1 GET; its footer, index block and header); one tensor: its index data
    # block (at most 1 GET, when not in the tail), the data shard's tail (1 GET at opening)
    # and the tensor's bytes (at most 1 ranged GET, when not in that tail). 6 at most.
    # load_checkpoint: is the prefix a directory (1 list), does its index exist (1 HEAD), the
    # index's tail (1 GET of TAIL_BYTES: the whole index here, footer, index block, header and
    # every entry, see the size check below); get_tensor: the data shard's tail (1 GET, at its
    # opening) and the tensor's bytes (1 ranged GET: they lie before that tail). 5 in all.
    assert sizes["model.ckpt.index"] < TAIL_BYTES
    assert requests <= 5, list(proxy.log)
    assert fetched < 0.05 * total, (fetched, total)
    # Fetched: the index (tens of KB) and the data shard's tail (64 KiB), not the 8 MiB tensor.

    proxy.reset()
    restored = ckptlib.restore(prefix)
    requests, fetched = proxy.counts()
    np.testing.assert_array_equal(restored["big"], tree["big"])
    np.testing.assert_array_equal(restored["small"]["t1999"], tree["small"]["t1999"])
    assert fetched <= 1.1 * total, (fetched, total)


# --- 7. the reading side never writes


def test_reading_makes_only_get_head_and_list_requests(s3_endpoint, s3_bucket, proxied):
    """latest_checkpoint, get_checkpoint_state, load_checkpoint (and reads through it),
    checkpoint_exists and restore on an S3 directory send only GET and HEAD requests (lists
    are GETs): no PUT, POST or DELETE, even with a killed save's leftovers there."""
    proxy = proxied
    run = f"{s3_bucket}/run"
    saver = ckptlib.Saver(max_to_keep=2)
    for step in (1, 2):
        saver.save(state_tree(step), f"{run}/model.ckpt", global_step=step)
    # Leftovers of a killed save: a data object without its index and an unfinished upload.
    bucket, key = _split(run)
    client = _client(s3_endpoint)
    client.put_object(Bucket=bucket, Key=f"{key}/model.ckpt-3.data-00000-of-00001", Body=b"x" * 100)
    client.create_multipart_upload(Bucket=bucket, Key=f"{key}/model.ckpt-3.index")

    proxy.reset()
    assert ckptlib.latest_checkpoint(run) == f"{run}/model.ckpt-2"
    assert ckptlib.get_checkpoint_state(run).model_checkpoint_path == f"{run}/model.ckpt-2"
    with ckptlib.load_checkpoint(run) as reader:
        reader.get_tensor("step")
        reader.read_all(reader.keys_list())
    assert ckptlib.checkpoint_exists(f"{run}/model.ckpt-2")
    assert not ckptlib.checkpoint_exists(f"{run}/model.ckpt-3")
    assert_tree_equal(ckptlib.restore(run), state_tree(2))
    target = state_tree(0)
    ckptlib.restore(f"{run}/model.ckpt-1", into=target)
    assert_tree_equal(target, state_tree(1))
    log = list(proxy.log)
    assert {method for method, _, _ in log} <= {"GET", "HEAD"}, [
        entry for entry in log if entry[0] not in ("GET", "HEAD")
    ]
    assert len(unfinished_under(s3_endpoint, run)) == 1
    assert "model.ckpt-3.data-00000-of-00001" in names_in(s3_endpoint, run)


# --- 3. a save killed mid-upload, and the repair of what it left

_KILLED_SAVER = textwrap.dedent(
    """
    import sys

    import numpy as np

    import ckptlib
    from ckptlib.store.remote import FsspecStore

    FsspecStore.part_bytes = 1 << 20  # 1 MiB parts: a 64 MiB shard is a long multipart upload
    run = sys.argv[1]
    saver = ckptlib.Saver(max_to_keep=2, num_shards=3)
    saver.save({"w": np.arange(1000, dtype=np.float32)}, run + "/model.ckpt", global_step=1)
    print("step 1 saved", flush=True)
    # 64 MiB in shard 0, one small tensor in each of shards 1 and 2 (finished early)
    big = {"big": np.full(8 << 20, 2.0), "a": np.arange(10), "b": np.arange(20)}
    saver.save(big, run + "/model.ckpt", global_step=2)
    print("step 2 saved", flush=True)
    """
)


def _kill_during_step_2(
    endpoint: str, run: str, time_to_kill, delay_s: float, saver_endpoint: str | None = None
) -> bool:
    """Run ``_KILLED_SAVER`` (against ``saver_endpoint``, by default the server itself) and
    SIGKILL it ``delay_s`` after ``time_to_kill()`` turns true during step 2; whether the kill
    landed before step 2's index was written."""
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVER, run],
        env={**os.environ, "PYTHONPATH": REPO, "AWS_ENDPOINT_URL": saver_endpoint or endpoint},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "step 1 saved\n"
        deadline = time.monotonic() + 30
        while not time_to_kill():
            assert process.poll() is None, "the saver ended before the time to kill it"
            assert time.monotonic() < deadline, "the time to kill the saver never came"
            time.sleep(0.01)
        time.sleep(delay_s)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()
    return "model.ckpt-2.index" not in names_in(endpoint, run)


@pytest.mark.parametrize("when", ["mid-upload", "before-index"])
def test_save_killed_mid_save_leaves_step_1_and_repair_removes_leftovers(s3_endpoint, s3_bucket, s3_proxy, when):
    """A Saver process SIGKILLed while saving a 64 MiB step 2 (mid-upload: a short random
    delay after its first multipart upload started; before-index: once its data shards are
    uploaded, while the index's PUT hangs at the proxy) leaves step 1 the latest and intact,
    and no step 2 (no index, checkpoint_exists False). repair without assume_idle returns
    False and changes nothing; with assume_idle it aborts the unfinished uploads and deletes
    step 2's data objects, leaving step 1 and the state file as they were."""
    if when == "mid-upload":
        for attempt, delay_s in enumerate([random.uniform(0.05, 0.3), 0.02, 0.0, 0.0, 0.0]):
            run = f"{s3_bucket}/run{attempt}"
            started = lambda run=run: bool(unfinished_under(s3_endpoint, run))  # noqa: E731
            # the kill must land while an upload is unfinished (on a loaded machine a late
            # one may find every shard finished): else try again, sooner
            if _kill_during_step_2(s3_endpoint, run, started, delay_s) and started():
                break
        else:
            pytest.fail("step 2's uploads finished before every kill")
    else:
        run = f"{s3_bucket}/run"
        s3_proxy.fail_next(1, kind="hang", method="PUT", path="model.ckpt-2.index")

        def index_put_hangs() -> bool:
            return any(status == 0 and "model.ckpt-2.index" in path for _, path, status in list(s3_proxy.log))

        assert _kill_during_step_2(s3_endpoint, run, index_put_hangs, 0.0, saver_endpoint=s3_proxy.endpoint)

    step1 = bundle_names("model.ckpt-1", 3)
    assert ckptlib.latest_checkpoint(run) == f"{run}/model.ckpt-1"
    assert_tree_equal(ckptlib.restore(run), {"w": np.arange(1000, dtype=np.float32)})
    assert not ckptlib.checkpoint_exists(f"{run}/model.ckpt-2")
    names = names_in(s3_endpoint, run)
    assert "model.ckpt-2.index" not in names
    leftovers = unfinished_under(s3_endpoint, run)
    if when == "mid-upload":
        assert leftovers, "the kill left no unfinished upload to repair"
        assert names >= step1 | {"checkpoint"}
    else:  # every data shard of step 2 is there, without its index
        assert names == step1 | {"checkpoint"} | (bundle_names("model.ckpt-2", 3) - {"model.ckpt-2.index"})
    state_before = fetch(s3_endpoint, f"{run}/checkpoint")
    step1_before = {name: fetch(s3_endpoint, f"{run}/{name}") for name in step1}

    assert ckptlib.repair(run) is False  # S3 cannot tell that no save is running
    assert names_in(s3_endpoint, run) == names
    assert sorted(unfinished_under(s3_endpoint, run)) == sorted(leftovers)

    assert ckptlib.repair(run, assume_idle=True) is True
    assert unfinished_under(s3_endpoint, run) == []
    assert names_in(s3_endpoint, run) == step1 | {"checkpoint"}
    assert fetch(s3_endpoint, f"{run}/checkpoint") == state_before
    assert {name: fetch(s3_endpoint, f"{run}/{name}") for name in step1} == step1_before
    assert_tree_equal(ckptlib.restore(f"{run}/model.ckpt-1"), {"w": np.arange(1000, dtype=np.float32)})


# --- 4. two savers sharing one directory

_MANAGER = textwrap.dedent(
    """
    import sys

    import numpy as np

    import ckptlib

    run, name = sys.argv[1], sys.argv[2]
    manager = ckptlib.CheckpointManager(run, max_to_keep=2, checkpoint_name=name)
    print("ready", flush=True)
    sys.stdin.readline()  # both start saving at once
    lost = []
    for step in range(1, 6):
        manager.save({"who": name, "step": np.array(step), "w": np.full(1000, step, np.float32)})
        # The other manager's updates keep this one's entries: none is ever missing.
        listed = ckptlib.get_checkpoint_state(run).all_model_checkpoint_paths
        lost += [prefix for prefix in manager.checkpoints if prefix not in listed]
    print(" ".join(manager.checkpoints), flush=True)
    print("lost:", " ".join(lost), flush=True)
    """
)


def test_two_managers_saving_into_one_directory_lose_nothing(s3_endpoint, s3_bucket):
    """Two processes, each a CheckpointManager (max_to_keep=2) with its own checkpoint_name
    in one S3 directory, save 5 times at once: the state file lists both managers' kept
    checkpoints (no update lost to the other's conditional writes), each rotation deleted
    only its own checkpoints, and every listed checkpoint restores to its saver's values."""
    run = f"{s3_bucket}/run"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _MANAGER, run, name],
            env={**os.environ, "PYTHONPATH": REPO},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    try:
        for process in processes:
            assert process.stdout.readline() == "ready\n"
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=45)[0].splitlines() for process in processes]
        assert [process.returncode for process in processes] == [0, 0]
    finally:
        for process in processes:
            process.kill()
            process.wait(10)

    assert [lines[1:] for lines in outputs] == [["lost: "], ["lost: "]]  # no entry of a saver ever went missing
    kept = [lines[0].split() for lines in outputs]
    assert kept == [[f"{run}/{name}-4", f"{run}/{name}-5"] for name in ("alpha", "beta")]
    state = ckptlib.get_checkpoint_state(run)
    assert sorted(state.all_model_checkpoint_paths) == sorted(kept[0] + kept[1])
    assert state.model_checkpoint_path in (f"{run}/alpha-5", f"{run}/beta-5")
    names = names_in(s3_endpoint, run)
    assert names == {"checkpoint"} | {n for p in kept[0] + kept[1] for n in bundle_names(p.rsplit("/", 1)[1])}
    for prefix in kept[0] + kept[1]:
        name, step = prefix.rsplit("/", 1)[1].split("-")
        restored = ckptlib.restore(prefix, object_paths=False)
        assert restored["who"] == name and int(restored["step"]) == int(step)


# --- 6. injected faults at the Saver level


def _statuses(proxy) -> list[int]:
    return [status for _, _, status in list(proxy.log)]


def test_a_few_503s_during_a_save_are_retried(s3_endpoint, s3_bucket, proxied):
    """503s answered once each to a part upload, the index's PUT, the state file's read and its
    conditional PUT are retried: the save succeeds and restores exactly."""
    proxy = proxied
    run = f"{s3_bucket}/run"
    tree = {**state_tree(1), "big": np.arange(40_000, dtype=np.float64)}  # 5 parts of 64 KiB
    proxy.fail_next(1, method="PUT", path="model.ckpt-1.data")
    proxy.fail_next(1, method="PUT", path="model.ckpt-1.index")
    proxy.fail_next(1, method="GET", path="run/checkpoint")
    proxy.fail_next(1, method="PUT", path="run/checkpoint")
    assert ckptlib.Saver().save(tree, f"{run}/model.ckpt", global_step=1) == f"{run}/model.ckpt-1"
    assert _statuses(proxy).count(503) == 4
    assert ckptlib.latest_checkpoint(run) == f"{run}/model.ckpt-1"
    assert_tree_equal(ckptlib.restore(run), tree)
    assert unfinished_under(s3_endpoint, run) == []


@pytest.mark.parametrize("kind", ["503", "drop", "hang"])
def test_persistent_data_upload_failures_end_the_save_in_storage_error(s3_endpoint, s3_bucket, proxied, kind):
    """Every part upload of step 2's data answered 503 (or its connection dropped, or left
    unanswered until the client's read timeout): Saver.save raises StorageError (a
    CheckpointError and an OSError) within a bounded time, step 1 stays the latest and
    restores, the state file is unchanged, and no unfinished multipart upload remains."""
    proxy = proxied
    run = f"{s3_bucket}/run"
    saver = ckptlib.Saver(max_to_keep=1)
    saver.save(state_tree(1), f"{run}/model.ckpt", global_step=1)
    state_before = fetch(s3_endpoint, f"{run}/checkpoint")
    names_before = names_in(s3_endpoint, run)

    proxy.fail_next(100_000, kind, method="PUT", path="model.ckpt-2.data")  # the parts, not the upload's start (POST)
    big = {**state_tree(2), "big": np.arange(40_000, dtype=np.float64)}  # 5 parts of 64 KiB
    started = time.monotonic()
    with pytest.raises(ckptlib.StorageError) as caught:
        saver.save(big, f"{run}/model.ckpt", global_step=2)
    # 3 tries per part, each at most the read timeout (4 s) when hanging, backoff at most 1 + 2 s
    assert time.monotonic() - started < 30
    assert isinstance(caught.value, ckptlib.CheckpointError) and isinstance(caught.value, OSError)
    assert "model.ckpt-2.data" in str(caught.value)
    failed = 503 if kind == "503" else 0  # (0: dropped or left hanging)
    log = list(proxy.log)
    assert any(method == "PUT" and "partNumber" in path and status == failed for method, path, status in log)
    assert any(method == "POST" and "model.ckpt-2.data" in path for method, path, _ in log)  # it started
    assert unfinished_under(s3_endpoint, run) == []
    assert fetch(s3_endpoint, f"{run}/checkpoint") == state_before
    assert names_in(s3_endpoint, run) == names_before
    assert ckptlib.latest_checkpoint(run) == f"{run}/model.ckpt-1"
    assert_tree_equal(ckptlib.restore(run), state_tree(1))


def test_persistent_state_file_failures_leave_step_1_named(s3_endpoint, s3_bucket, proxied):
    """Every conditional PUT of the state file answered 503: Saver.save raises StorageError;
    the state file still names step 1 only, and step 1 (which max_to_keep=1 would have
    rotated out) still exists and restores. Step 2's bundle may exist but is not listed; the
    next save, the fault gone, lists step 3 and deletes steps 1 and 2."""
    proxy = proxied
    run = f"{s3_bucket}/run"
    saver = ckptlib.Saver(max_to_keep=1)
    saver.save(state_tree(1), f"{run}/model.ckpt", global_step=1)
    state_before = fetch(s3_endpoint, f"{run}/checkpoint")

    proxy.fail_next(100_000, method="PUT", path="run/checkpoint")
    started = time.monotonic()
    with pytest.raises(ckptlib.StorageError) as caught:
        saver.save(state_tree(2), f"{run}/model.ckpt", global_step=2)
    assert time.monotonic() - started < 30
    assert "checkpoint" in str(caught.value)
    assert fetch(s3_endpoint, f"{run}/checkpoint") == state_before
    state = ckptlib.get_checkpoint_state(run)
    assert (state.model_checkpoint_path, list(state.all_model_checkpoint_paths)) == (
        f"{run}/model.ckpt-1",
        [f"{run}/model.ckpt-1"],
    )
    assert ckptlib.latest_checkpoint(run) == f"{run}/model.ckpt-1"
    assert_tree_equal(ckptlib.restore(run), state_tree(1))

    proxy.reset()
    saver.save(state_tree(3), f"{run}/model.ckpt", global_step=3)
    state = ckptlib.get_checkpoint_state(run)
    assert list(state.all_model_checkpoint_paths) == [f"{run}/model.ckpt-3"]
    assert names_in(s3_endpoint, run) == {"checkpoint"} | bundle_names("model.ckpt-3")  # steps 1 and 2 rotated out
    assert_tree_equal(ckptlib.restore(run), state_tree(3))


def test_persistent_index_upload_failures_remove_the_uploaded_data(s3_endpoint, s3_bucket, proxied):
    """Step 2's data shards uploaded, every PUT of its index answered 503: Saver.save raises
    StorageError naming the index, and the data objects already complete are deleted again
    (nothing of step 2 remains, no unfinished upload), step 1 still the latest."""
    proxy = proxied
    run = f"{s3_bucket}/run"
    saver = ckptlib.Saver(max_to_keep=1, num_shards=2)
    saver.save(state_tree(1), f"{run}/model.ckpt", global_step=1)
    state_before = fetch(s3_endpoint, f"{run}/checkpoint")
    names_before = names_in(s3_endpoint, run)

    proxy.reset()
    proxy.fail_next(100_000, method="PUT", path="model.ckpt-2.index")
    big = {**state_tree(2), "big": np.arange(40_000, dtype=np.float64)}
    started = time.monotonic()
    with pytest.raises(ckptlib.StorageError) as caught:
        saver.save(big, f"{run}/model.ckpt", global_step=2)
    assert time.monotonic() - started < 30
    assert "model.ckpt-2.index" in str(caught.value)
    # both data shards were complete objects before the index failed, and were deleted again
    log = list(proxy.log)
    deleted = {path.rsplit("/", 1)[1] for method, path, _ in log if method == "DELETE" and "?" not in path}
    assert deleted == bundle_names("model.ckpt-2", 2) - {"model.ckpt-2.index"}, log
    assert names_in(s3_endpoint, run) == names_before
    assert unfinished_under(s3_endpoint, run) == []
    assert fetch(s3_endpoint, f"{run}/checkpoint") == state_before
    assert ckptlib.latest_checkpoint(run) == f"{run}/model.ckpt-1"
    assert_tree_equal(ckptlib.restore(run), state_tree(1))


def test_repair_of_a_directory_leaves_its_subdirectories_alone(s3_endpoint, s3_bucket):
    """repair(run, assume_idle=True) vouches for ``run`` only: the unfinished upload and the
    unindexed data object of a save into ``run/eval`` (a directory of its own, where a save
    may be running) stay, while those directly in ``run`` go."""
    run = f"{s3_bucket}/run"
    ckptlib.Saver().save(state_tree(1), f"{run}/model.ckpt", global_step=1)
    ckptlib.Saver().save(state_tree(1), f"{run}/eval/model.ckpt", global_step=1)
    bucket, key = _split(run)
    client = _client(s3_endpoint)
    for directory in (key, f"{key}/eval"):
        client.put_object(Bucket=bucket, Key=f"{directory}/model.ckpt-2.data-00000-of-00002", Body=b"x")
        client.create_multipart_upload(Bucket=bucket, Key=f"{directory}/model.ckpt-2.data-00001-of-00002")

    assert ckptlib.repair(run, assume_idle=True) is True
    assert unfinished_under(s3_endpoint, run) == [f"{key}/eval/model.ckpt-2.data-00001-of-00002"]
    assert "model.ckpt-2.data-00000-of-00002" not in names_in(s3_endpoint, run)
    assert "eval/model.ckpt-2.data-00000-of-00002" in names_in(s3_endpoint, run)


# --- review findings


def test_a_directory_url_with_a_trailing_slash_is_the_same_directory(s3_bucket: str) -> None:
    """``CheckpointManager("s3://b/run/")`` records names relative to the directory, exactly
    as without the slash, so a restart finds its checkpoints."""
    for i in range(3):
        ckptlib.CheckpointManager(f"{s3_bucket}/run/", max_to_keep=2).save({"w": np.full(2, i, np.float32)})
    state = ckptlib.get_checkpoint_state(f"{s3_bucket}/run")
    assert state is not None
    assert state.model_checkpoint_path == f"{s3_bucket}/run/ckpt-3"
    assert [p.rsplit("/", 1)[1] for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-3"]
    assert ckptlib.CheckpointManager(f"{s3_bucket}/run", max_to_keep=2).checkpoints == [
        f"{s3_bucket}/run/ckpt-2",
        f"{s3_bucket}/run/ckpt-3",
    ]


def test_saving_over_an_existing_checkpoint_is_refused_before_anything_is_written(s3_bucket: str) -> None:
    """Without a rename, a checkpoint cannot be replaced so that a failed save leaves the
    old one whole: the second save of one prefix raises and the first stays as it was."""
    prefix = f"{s3_bucket}/run/best"
    ckptlib.save({"w": np.arange(4.0)}, prefix)
    with pytest.raises(ckptlib.UnsupportedFeatureError, match="cannot replace"):
        ckptlib.save({"w": np.zeros(8)}, prefix)
    assert_tree_equal(ckptlib.restore(prefix), {"w": np.arange(4.0)})
    with pytest.raises(ckptlib.UnsupportedFeatureError):
        ckptlib.Saver().save({"w": np.zeros(8)}, prefix)
    assert_tree_equal(ckptlib.restore(prefix), {"w": np.arange(4.0)})
