"""Kill an example training job with SIGKILL mid-run, start it again, and check it ends where a
run never interrupted ends.

Any example job plugs in that takes ``--dir DIR --epochs N``, saves a checkpoint (a
``*.index`` file appears in DIR) at least once before its last epoch, resumes from DIR's
latest checkpoint when started again, and prints ``final loss <repr>`` as its last line::

    def test_my_example_resumes_after_sigkill(tmp_path):
        assert_resumes_after_sigkill(ROOT / "examples" / "my_train.py", tmp_path)

The kill lands at a random moment between the first checkpoint and the end of the run (the
uninterrupted run measures how long that is); the seed is in every failure message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.005


@dataclass(frozen=True)
class Run:
    """One run of an example: its exit status, output, and when (seconds after start) its
    first checkpoint appeared and it ended."""

    returncode: int
    stdout: str
    stderr: str
    first_checkpoint_s: float | None
    end_s: float

    def explain(self) -> str:
        return f"--- exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


def final_loss(run: Run) -> str:
    """The ``<repr>`` of the ``final loss <repr>`` last line (a string: compared exactly)."""
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and lines and lines[-1].startswith("final loss "), run.explain()
    return lines[-1].removeprefix("final loss ")


def has_checkpoint(directory: Path) -> bool:
    """Whether a checkpoint is complete in ``directory``: its index is renamed into place last."""
    return directory.is_dir() and any(directory.glob("*.index"))


def run_example(
    script: Path, directory: Path, epochs: int, *, kill_after_s: float | None = None, timeout_s: float = 300
) -> Run:
    """Run ``script`` to its end, or SIGKILL it ``kill_after_s`` seconds after its first
    checkpoint appears (if it is still running then)."""
    logs = directory.parent / f"{directory.name}.{time.monotonic_ns()}"
    argv = [sys.executable, str(script), "--dir", str(directory), "--epochs", str(epochs)]
    with open(f"{logs}.out", "w+") as out, open(f"{logs}.err", "w+") as err:  # files: a full pipe would stall it
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=directory.parent, env=_env()
        )
        first_checkpoint, kill_at = None, None
        try:
            while proc.poll() is None:
                now = time.monotonic() - start
                assert now < timeout_s, f"{script.name} ran longer than {timeout_s} s"
                if first_checkpoint is None and has_checkpoint(directory):
                    first_checkpoint = now
                    kill_at = None if kill_after_s is None else now + kill_after_s
                if kill_at is not None and now >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    break
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        end = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return Run(proc.returncode, out.read(), err.read(), first_checkpoint, end)


def assert_resumes_after_sigkill(
    script: Path,
    tmp_path: Path,
    *,
    epochs: int = 30,
    seed: int | None = None,
    attempts: int = 5,
    resume_marker: str | None = "resumed from",
) -> None:
    """Run ``script`` once uninterrupted, then in a fresh directory SIGKILL it at a random
    moment after its first checkpoint and before it prints its final loss, start it again
    with the same arguments, and assert that both end on the same ``final loss`` (and that
    the second start printed ``resume_marker``, so it did resume)."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    straight = run_example(script, tmp_path / "straight", epochs)
    expected = final_loss(straight)
    assert straight.first_checkpoint_s is not None, f"no checkpoint appeared\n{straight.explain()}"
    window = straight.end_s - straight.first_checkpoint_s
    for attempt in range(attempts):
        directory = tmp_path / f"killed-{attempt}"
        # the kill must land before the job ends; on a busier machine the job may run faster
        # or slower than the straight run did, so aim inside the first 80% of its window
        killed = run_example(script, directory, epochs, kill_after_s=rng.uniform(0, 0.8 * window))
        if killed.returncode == -signal.SIGKILL and "final loss" not in killed.stdout:
            break
        assert killed.returncode in (0, -signal.SIGKILL), f"seed {seed}\n{killed.explain()}"
        window /= 2  # it was done before the kill: aim earlier
    else:
        raise AssertionError(f"seed {seed}: {script.name} finished before every kill in {attempts} attempts")
    assert has_checkpoint(directory), f"seed {seed}: killed before its first checkpoint\n{killed.explain()}"
    resumed = run_example(script, directory, epochs)
    if resume_marker is not None:
        assert resume_marker in resumed.stdout, f"seed {seed}: it started afresh\n{resumed.explain()}"
    assert final_loss(resumed) == expected, (
        f"seed {seed}: resumed run ends on {final_loss(resumed)}, the uninterrupted one on {expected}\n"
        f"--- killed run\n{killed.explain()}\n--- resumed run\n{resumed.explain()}"
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env
