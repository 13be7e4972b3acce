"""Crash safety: SIGKILL a saving process at random instants, 50 times.

The full harness (tools/kill_test.py) checks after every kill that the latest checkpoint
restores, verifies and equals one whole state the child started saving, and at the end
that a clean save swept every temporary file the killed children left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fifty_kills_never_lose_the_last_good_checkpoint(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "kill_test.py"), "--kills", "50", "--dir", str(tmp_path), "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["kills"] == 50
    assert summary["survivors"] == 50
    # The kills must have landed mid-save, not only between saves, for the test to mean anything.
    assert summary["distinct_latest_steps"] >= 10
    assert summary["stranded_at_the_end"] == 0  # every rotated-out checkpoint deleted, or noted for deletion


def test_thirty_kills_during_async_saves_never_lose_or_tear_the_latest(tmp_path: Path) -> None:
    """The child saves with ``async_save=True`` and changes its arrays in place right after
    each ``save`` returns: a snapshot that let those changes through would show as a torn or
    mismatched latest checkpoint (tools/kill_test.py --async; 500 kills by hand)."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "kill_test.py"),
            "--kills",
            "30",
            "--async",
            "--dir",
            str(tmp_path),
            "--seed",
            "11",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["async"] is True and summary["kills"] == summary["survivors"] == 30
    assert summary["distinct_latest_steps"] >= 6
    assert summary["stranded_at_the_end"] == 0
