"""The README, tried as a new user would: every command and snippet in it works as written.

* the two set-up commands at the top exist, point at things that exist (the example script, the
  ``test``/``tf`` extras), and ``.ci/run`` runs exactly the README's test command line;
* the ```` ```python ```` blocks run in order in one namespace (like a tutorial) in a fresh
  directory; blocks that ``import tensorflow`` (or ``keras``, whose default backend it is) run
  only where TensorFlow is installed, in a separate process (this test process never imports
  it), and blocks that import another framework (JAX, flax, optax, Keras, torch) only where it
  is installed; ``print(...)  # <literal>`` comments must match what is printed;
* paths that only exist on the reader's machine (``path/to/tf_run/ckpt-12``) are prepared
  from the golden TensorFlow checkpoints before the snippets run (see ``PREPARED``);
* the README's ``ckptlib ...`` shell commands run after the tour, in its directory, and must
  exit 0 (or N, for a line ending in the comment ``# exit N``);
* the example job of the first command runs twice and resumes the second time;
* ``CKPTLIB_FRESH_VENV=1``: the first command's install, for real, into a brand-new venv
  (slow, needs the package index; off by default).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GOLDEN = ROOT / "tests" / "data" / "golden"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def blocks(language: str | tuple[str, ...]) -> list[str]:
    languages = (language,) if isinstance(language, str) else language
    return [m.group(2) for m in FENCE.finditer(README.read_text(encoding="utf-8")) if m.group(1) in languages]


def shell_blocks() -> list[str]:
    return blocks(("sh", "bash", "shell", "console"))


def setup_commands() -> tuple[str, str]:
    """The two one-line commands at the top: run the example job, run the test suite."""
    text = README.read_text(encoding="utf-8")
    top = text[: text.find("\n## ")] if "\n## " in text else text
    commands = [m.group(2).strip() for m in FENCE.finditer(top) if m.group(1) in ("sh", "bash", "shell")]
    job = [c for c in commands if "examples/train_loop.py" in c]
    suite = [c for c in commands if "pytest" in c]
    assert len(job) == 1 and len(suite) == 1, commands
    return job[0], suite[0]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def run(cmd: list[str] | str, cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=kw.pop("env", None) or _env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        **kw,
    )
    return proc


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"$ {proc.args}\n--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# ----------------------------------------------------------------------------------------
# the set-up commands and .ci/run


def test_setup_commands_exist():
    job, suite = setup_commands()
    assert job.startswith("python3 -m venv .venv && "), job
    assert suite.startswith("python3 -m venv .venv && "), suite
    steps = [shlex.split(part) for part in job.split("&&")]
    assert steps[1][:3] == [".venv/bin/pip", "install", "-e"] and steps[1][3] == ".", steps
    assert steps[-1][0] == ".venv/bin/python" and (ROOT / steps[-1][1]).is_file(), steps
    steps = [shlex.split(part) for part in suite.split("&&")]
    assert steps[1][:3] == [".venv/bin/pip", "install", "-e"], steps
    extras = re.fullmatch(r"\.\[([\w,]+)\]", steps[1][3])
    assert extras, steps[1]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for extra in extras.group(1).split(","):
        assert re.search(rf"^{extra} = \[", pyproject, re.M), f"README installs extra {extra!r}; pyproject lacks it"
    if len(steps[1]) > 4:  # pinned versions: "-c FILE", a file of the project
        assert steps[1][4] == "-c" and (ROOT / steps[1][5]).is_file() and len(steps[1]) == 6, steps[1]
    assert steps[-1] == [".venv/bin/python", "-m", "pytest"], steps


def _ci_pattern() -> str:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    m = re.search(r'grep -m1 -E "([^"]+)" README\.md', script)
    assert m, "expected .ci/run to pick its command from README.md with grep -m1 -E"
    assert 'bash -c "$command"' in script
    return m.group(1)


def test_ci_run_uses_the_readme_test_command():
    """``.ci/run`` greps README.md for its command: that must be the README's test command."""
    pattern = _ci_pattern()
    _, suite = setup_commands()
    lines = README.read_text(encoding="utf-8").splitlines()
    first = next((line for line in lines if re.search(pattern, line)), None)  # what grep -m1 -E picks
    assert first == suite, (pattern, first, suite)
    if shutil.which("grep"):
        proc = run(["grep", "-m1", "-E", pattern, "README.md"], cwd=ROOT)
        assert proc.stdout.rstrip("\n") == suite, explain(proc)


def test_ci_run_executes_that_command(tmp_path):
    """``.ci/run`` end to end on a copy, with stand-ins for python3, pip and pytest that only
    record how they were called."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to run .ci/run")
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    shutil.copy(README, repo / "README.md")
    log = tmp_path / "calls.log"
    recorder = f'#!/bin/sh\necho "$(basename "$0") $*" >> {shlex.quote(str(log))}\n'
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(
        recorder + 'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; '
        'for t in pip python; do cp "$0" "$3/bin/$t"; done; fi\n'
    )
    (fake_bin / "python3").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = run([bash, ".ci/run"], cwd=repo, env=env, timeout=60)
    assert proc.returncode == 0, explain(proc)
    _, suite = setup_commands()
    assert proc.stdout.splitlines()[0] == f"+ {suite}"
    expected = [" ".join(shlex.split(part)).replace(".venv/bin/", "") for part in suite.split("&&")]
    assert log.read_text().splitlines() == expected


# ----------------------------------------------------------------------------------------
# the Python tour

# README paths that stand for the reader's own files, made from golden TensorFlow checkpoints:
# README path (a prefix) -> (golden case, its prefix there)
PREPARED = {"path/to/tf_run/ckpt-12": ("tf2_slots", "ckpt-1")}

NEEDS_TF = re.compile(r"^\s*(import tensorflow|from tensorflow|import keras|from keras)\b", re.M)
FRAMEWORK = re.compile(r"^\s*(?:import|from)\s+(jax|flax|optax|keras|torch)\b", re.M)


# Blocks on S3 run apart, against a local S3 server (test_remote_storage_snippet).
NEEDS_S3 = re.compile(r"""["']s3://""")


def runnable(block: str) -> bool:
    """Whether every framework the block imports (TensorFlow aside) is installed here, and
    the block needs no S3 server."""
    if NEEDS_S3.search(block):
        return False
    return all(importlib.util.find_spec(name) is not None for name in FRAMEWORK.findall(block))


# Appended to the tour: what the snippets promise, beyond not raising.
TOUR_CHECKS = """
import numpy as _np
if "kernel" in globals():  # the tour trained 5 epochs of `kernel += 1.0` from zeros
    assert _np.array_equal(kernel, _np.full((4, 1), 5.0, _np.float32)), kernel
if "weights" in globals():  # {name: numpy array} from TensorFlow's checkpoint
    assert isinstance(weights, dict) and weights, weights
    assert all(isinstance(v, _np.ndarray) for v in weights.values()), weights
print("README TOUR DONE")
"""


def prepare_readme_paths(directory: Path, code: str) -> None:
    for literal in re.findall(r"""["'](path/to/[^"']+)["']""", code):
        assert literal in PREPARED, f"README uses {literal!r}: add how to prepare it to PREPARED in {__file__}"
        case, source = PREPARED[literal]
        target = directory / literal
        target.parent.mkdir(parents=True, exist_ok=True)
        for f in (GOLDEN / case).glob(source + ".*"):
            shutil.copy(f, target.parent / (target.name + f.name[len(source) :]))


def printed_literals(code: str) -> list[object]:
    """The values promised by ``print(...)  # <python literal>`` lines."""
    out = []
    for line in code.splitlines():
        m = re.match(r"^\s*print\(.*\)\s+#\s*(.+)$", line)
        if m:
            try:
                out.append(ast.literal_eval(m.group(1).strip()))
            except (ValueError, SyntaxError):
                continue  # a prose comment
    return out


def run_tour(directory: Path, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    prepare_readme_paths(directory, code)
    script = directory / "readme_tour.py"
    script.write_text(code + "\n" + TOUR_CHECKS, encoding="utf-8")
    proc = run([sys.executable, script.name], cwd=directory, timeout=timeout)
    assert proc.returncode == 0, explain(proc) + "\n--- the tour\n" + code
    assert proc.stdout.rstrip().endswith("README TOUR DONE"), explain(proc)
    for value in printed_literals(code):
        assert str(value) in proc.stdout.splitlines(), (value, proc.stdout)
    return proc


def test_readme_has_python_snippets():
    snippets = blocks("python")
    assert len(snippets) >= 3
    assert any(NEEDS_TF.search(b) for b in snippets) and any(not NEEDS_TF.search(b) for b in snippets)


def test_every_framework_block_runs_here():
    """Says (as a skip) which frameworks are missing here, whose README blocks the tours leave out."""
    imported = {name for block in blocks("python") for name in FRAMEWORK.findall(block)}
    missing = sorted(name for name in imported if importlib.util.find_spec(name) is None)
    if missing:
        pytest.skip(f"not installed, so their README blocks were not run: {', '.join(missing)}")


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> Path:
    """The README's Python blocks that need no TensorFlow, in order, in one fresh directory."""
    directory = tmp_path_factory.mktemp("tour")
    code = "\n\n".join(b for b in blocks("python") if not NEEDS_TF.search(b) and runnable(b))
    run_tour(directory, code)
    return directory


def test_python_tour_without_tensorflow(tour):
    demo = tour / "runs" / "demo"
    # Saver(max_to_keep=3), global_step 0..4: the newest three are kept, with the state file
    assert sorted(p.name for p in demo.glob("*.index")) == [f"model.ckpt-{i}.index" for i in (2, 3, 4)]
    assert (demo / "checkpoint").is_file()


def test_python_tour_with_tensorflow(tmp_path):
    """All blocks, the TensorFlow ones included, in order (TensorFlow imported in the child only)."""
    snippets = blocks("python")
    if not any(NEEDS_TF.search(b) for b in snippets):
        pytest.skip("the README has no TensorFlow snippets")
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed: the README's `import tensorflow` snippets were not run")
    run_tour(tmp_path, "\n\n".join(b for b in snippets if runnable(b)), timeout=600)


def test_remote_storage_snippet(tmp_path, s3_endpoint):
    """The S3 blocks, against a local S3 server (moto), with the buckets they name created."""
    from s3_server import new_bucket

    code = "\n\n".join(b for b in blocks("python") if NEEDS_S3.search(b))
    assert code, "the README has no S3 snippet"
    for bucket in set(re.findall(r"s3://([a-z0-9][a-z0-9.-]+)/", code)):
        new_bucket(s3_endpoint, bucket)
    run_tour(tmp_path, code)


# ----------------------------------------------------------------------------------------
# the README's `ckptlib ...` shell commands


def cli_commands() -> list[str]:
    """``ckptlib ...`` lines of the shell blocks (``$ ``-prompted lines where a block has prompts)."""
    out = []
    for block in shell_blocks():
        lines = [line.rstrip() for line in block.splitlines()]
        if any(line.startswith("$ ") for line in lines):
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        out += [line for line in lines if re.match(r"^ckptlib(\s|$)", line)]
    return out


def _expected_exit(command: str) -> int:
    """0, unless the line ends in a comment that is just ``# exit N`` (a documented failure)."""
    m = re.search(r"#\s*exit(?: status)?:?\s*(\d+)\s*$", command)
    return int(m.group(1)) if m else 0


def test_readme_cli_commands(tour, tmp_path):
    commands = cli_commands()
    if not commands:
        pytest.skip("the README shows no `ckptlib ...` shell commands to run")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to run the README's shell commands")
    work = Path(shutil.copytree(tour, tmp_path / "tour"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ckptlib").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ckptlib "$@"\n')
    (bin_dir / "ckptlib").chmod(0o755)
    env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    for command in commands:
        proc = run([bash, "-c", command], cwd=work, env=env, timeout=120)
        assert proc.returncode == _expected_exit(command), explain(proc)
        assert "Traceback" not in proc.stderr, explain(proc)


# ----------------------------------------------------------------------------------------
# the example job


def example_job_argv() -> list[str]:
    """The Python part of the first set-up command (``.venv/bin/python examples/train_loop.py``)."""
    job, _ = setup_commands()
    (step,) = [shlex.split(part) for part in job.split("&&") if "examples/" in part]
    assert step[0].endswith("/python") or step[0] in ("python", "python3"), step
    return step[1:]


def test_example_job_runs_and_resumes(tmp_path):
    script, *args = example_job_argv()
    argv = [sys.executable, str(ROOT / script), *args, "--dir", str(tmp_path / "runs" / "linear")]
    first = run(argv, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, explain(first)
    assert "resumed from" not in first.stdout
    assert re.search(r"^epoch\s+10\s+loss", first.stdout, re.M), first.stdout
    assert "kept: ['model.ckpt-8', 'model.ckpt-9', 'model.ckpt-10']" in first.stdout
    second = run(argv, cwd=tmp_path, timeout=120)
    assert second.returncode == 0, explain(second)
    latest = tmp_path / "runs" / "linear" / "model.ckpt-10"
    assert second.stdout.splitlines()[0] == f"resumed from {latest} (epoch 10)", second.stdout
    assert "kept: ['model.ckpt-8', 'model.ckpt-9', 'model.ckpt-10']" in second.stdout
    assert "epoch  11" not in second.stdout  # 10 epochs were done: nothing left to train


# ----------------------------------------------------------------------------------------
# a brand-new virtual environment (slow: opt in)


def _project_files() -> list[str]:
    """What a fresh clone holds (tracked and not-ignored files), or the packaging essentials."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        proc = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, timeout=60)
        if proc.returncode == 0:
            return [f for f in proc.stdout.splitlines() if (ROOT / f).is_file() and not f.startswith("tests/")]
    return [
        str(p.relative_to(ROOT))
        for top in ("ckptlib", "examples")
        for p in (ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ] + ["pyproject.toml", "README.md"]


@pytest.mark.skipif(
    os.environ.get("CKPTLIB_FRESH_VENV") != "1",
    reason="set CKPTLIB_FRESH_VENV=1 to install the project into a brand-new venv (slow, needs the package index)",
)
def test_fresh_venv_install_and_example_job(tmp_path):
    """The first README command, for real: a new venv, ``pip install`` of a clean copy of the
    project (no extras), then the example job twice and the ``ckptlib`` console script."""
    source = tmp_path / "ckptlib-src"
    for name in _project_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    venv = tmp_path / ".venv"
    python3 = shutil.which("python3") or sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = run([python3, "-m", "venv", str(venv)], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, explain(proc)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    proc = run([str(bin_dir / "pip"), "install", str(source)], cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, explain(proc)

    # the package comes from the venv, not from a source tree on sys.path
    proc = run([str(bin_dir / "python"), "-c", "import ckptlib; print(ckptlib.__file__)"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and str(venv) in proc.stdout, explain(proc)

    script, *args = example_job_argv()
    runs = tmp_path / "runs" / "linear"
    argv = [str(bin_dir / "python"), str(source / script), *args, "--dir", str(runs)]
    first = run(argv, cwd=source, env=env, timeout=300)
    assert first.returncode == 0 and "saved" in first.stdout, explain(first)
    second = run(argv, cwd=source, env=env, timeout=300)
    assert second.returncode == 0 and second.stdout.startswith("resumed from"), explain(second)

    outputs = []
    for args in (["ls", str(runs)], ["verify", str(runs)], ["inspect", str(runs), "--tensor", "dense/kernel"]):
        proc = run([str(bin_dir / "ckptlib"), *args], cwd=tmp_path, env=env, timeout=120)
        assert proc.returncode == 0, explain(proc)
        outputs.append(proc.stdout)
    assert outputs[1] == f"{runs / 'model.ckpt-10'}: OK, 3 tensor(s) verified\n"
