"""The ``ckptlib`` command: list, inspect, verify, diff, convert and repair checkpoints.

Argument parsing and rendering (text, and ``--json``) only: what each command finds is
computed by ``ckptlib.cli_reports`` through the public API, so every path may be a local
path or a URL (``s3://bucket/run``). Exit codes: 0 success, 1 damaged or missing input,
2 usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TextIO

import numpy as np

import ckptlib
from ckptlib import cli_reports as reports
from ckptlib.cli_reports import OBJECT_GRAPH


class _Progress:
    """``label 12/340`` redrawn on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None):
        self._label = label
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self._enabled or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        self._stream.write(f"\r{self._label} {done}/{total}")
        if done >= total:
            self._stream.write("\r" + " " * (len(self._label) + 24) + "\r")
        self._stream.flush()


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def _emit_json(data: Any) -> None:
    """Strict JSON (what jq and JavaScript accept): non-finite floats become the strings
    "NaN", "Infinity" and "-Infinity"."""
    json.dump(_finite(data), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# -- ls -------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    listing = reports.list_directory(args.directory)
    rows = listing.checkpoints
    if args.json:
        _emit_json(asdict(listing))
        return 0
    if not rows:
        print(f"{listing.directory}: no checkpoints")
        return 0
    print(f"{'':2}{'STEP':>8}  {'TIME':19}  {'SIZE':>10}  {'SHARDS':>6}  {'STATUS':19}  NAME")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.time)) if row.time else "-"
        status = "complete" if row.complete else "INCOMPLETE"
        if not row.listed:
            status += " (unlisted)"
        step = "-" if row.step is None else str(row.step)
        mark = "* " if row.latest else "  "
        print(f"{mark}{step:>8}  {when:19}  {_human(row.size):>10}  {row.shards:>6}  {status:19}  {row.name}")
    latest = listing.latest
    print(f"{len(rows)} checkpoint(s); * = latest" + (f" ({latest})" if latest else ""))
    return 0


# -- inspect --------------------------------------------------------------------------
def _format_value(array: np.ndarray) -> str:
    if array.dtype == object:
        return np.array2string(array, formatter={"object": repr})
    return np.array2string(array)


def cmd_inspect(args: argparse.Namespace) -> int:
    want_values = args.all or args.tensor is not None
    with reports.Inspection(args.path, args.tensor, values=want_values, stats=args.stats) as inspection:
        if inspection.graph_problem is not None:  # the tensors can still be listed; verify says more
            print(f"ckptlib inspect: warning: object paths not shown: {inspection.graph_problem}", file=sys.stderr)
        selected = inspection.names
        width = max([len(name) for name in selected] + [4])
        header = f"{'NAME':{width}}  {'DTYPE':18}  {'SHAPE':18}  {'SIZE':>10}  SHARD\n"
        if args.json:  # the document around the rows, written as _emit_json would
            document = {"prefix": inspection.prefix, "files": inspection.files, "tensors": _ROWS, "total_bytes": _TOTAL}
            opening, rest = _json_text(document).split(_json_text(_ROWS))
            between, closing = rest.split(_json_text(_TOTAL))
            header = opening + "[\n"
        # Each row is printed before the next tensor is read. The header waits for the first
        # row, so that nothing is printed if it cannot be read.
        total = 0
        for i, row in enumerate(inspection.rows()):
            total += row.nbytes
            sys.stdout.write(header if i == 0 else ",\n" if args.json else "")
            if args.json:
                sys.stdout.write(_json_text(_inspect_json(row), indent=4))
            else:
                _print_inspect_row(row, width)
        if args.json:
            sys.stdout.write(("\n  ]" if selected else opening + "[]") + f"{between}{total}{closing}\n")
            return 0
        if not selected:
            sys.stdout.write(header)
        print(f"{len(selected)} tensor(s), {_human(total)} in {len(inspection.files)} file(s): {inspection.prefix}")
    return 0


# Stand for the rows and the total in inspect's --json document; no path holds a NUL.
_ROWS = "\0rows\0"
_TOTAL = "\0total\0"


def _json_text(data: Any, indent: int = 0) -> str:
    """``data`` as ``_emit_json`` writes it, every line but the first indented by ``indent``."""
    text = json.dumps(_finite(data), indent=2, default=str, allow_nan=False)
    return " " * indent + text.replace("\n", "\n" + " " * indent) if indent else text


def _inspect_json(row: reports.TensorRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": row.name,
        "dtype": row.dtype,
        "shape": row.shape,
        "nbytes": row.nbytes,
        "shard": row.shard,
        "slices": row.slices,
    }
    if row.stats is not None:
        out["stats"] = row.stats
    if row.value is not None:
        out["value"] = _json_value(row.value)
    if row.paths is not None:
        out.update(asdict(row.paths))
    return out


def _print_inspect_row(row: reports.TensorRow, width: int) -> None:
    shard = "-" if row.shard is None else str(row.shard)
    if row.slices:
        shard += f" ({row.slices} slices)"
    print(f"{row.name:{width}}  {row.dtype:18}  {row.shape!s:18}  {_human(row.nbytes):>10}  {shard}")
    paths = row.paths
    if paths is not None and paths.object_path:
        others = [p for p in paths.object_paths if p != paths.object_path]
        print(f"    object path: {paths.object_path}" + (f"  (also {', '.join(others)})" if others else ""))
    if paths is not None and paths.slot:
        slot = paths.slot
        print(f"    slot {slot.name!r} of {slot.variable or '?'} for optimizer {slot.optimizer or '?'}")
    if row.stats:
        print("    " + "  ".join(f"{k}={_short(v)}" for k, v in row.stats.items()))
    if row.value is not None:
        for line in _format_value(row.value).splitlines():
            print("    " + line)


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _json_value(array: np.ndarray) -> Any:
    if array.dtype == object:
        return (
            [v.decode("utf-8", "backslashreplace") for v in array.reshape(-1)]
            if array.ndim
            else (array.item().decode("utf-8", "backslashreplace"))
        )
    if array.dtype.kind == "c":
        return {"real": array.real.tolist(), "imag": array.imag.tolist()}
    if array.dtype.kind not in "biuf":
        array = array.astype(np.float64)
    return array.tolist()


# -- verify ---------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    result = reports.verify_path(args.path, progress=_Progress("verifying"))
    if isinstance(result, reports.DirectoryVerdict):
        return _render_directory_verdict(args, result)
    if args.json:
        _emit_json(_verdict_json(result))
    else:
        _print_verdict(result)
    return 0 if result.ok else 1


def _verdict_json(verdict: reports.Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prefix": verdict.prefix,
        "ok": verdict.ok,
        "tensors": verdict.tensors,
        "problems": [p.message for p in verdict.problems],
    }
    if verdict.listed is not None:
        out["listed"] = verdict.listed
    return out


def _print_verdict(verdict: reports.Verdict) -> None:
    for problem in verdict.problems:
        print(f"{problem.label:7}  {problem.message}")
    if verdict.problems:
        print(f"{verdict.prefix}: {len(verdict.problems)} problem(s) found")
    else:
        print(f"{verdict.prefix}: OK, {verdict.tensors} tensor(s) verified")


def _render_directory_verdict(args: argparse.Namespace, result: reports.DirectoryVerdict) -> int:
    directory = result.directory
    if args.json:
        rows = [_verdict_json(v) for v in result.checkpoints]
        _emit_json({"directory": directory, "ok": result.ok, "checkpoints": rows, "problems": result.problems})
        return 0 if result.ok else 1
    for problem in result.problems:
        print(f"DAMAGED  {problem}")
    for verdict in result.checkpoints:
        _print_verdict(verdict)
    if result.ok:
        print(f"{directory}: OK, {len(result.checkpoints)} checkpoint(s) verified")
    else:
        state = ", state file unreadable" if result.problems else ""
        print(f"{directory}: {result.bad} of {len(result.checkpoints)} checkpoint(s) with problems{state}")
    return 0 if result.ok else 1


# -- diff -----------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    diff = reports.diff_checkpoints(args.a, args.b, atol=args.atol, progress=_Progress("comparing"))
    if args.json:
        _emit_json(asdict(diff))
        return 0
    for name in diff.only_in_a:
        print(f"- {name}  (only in A)")
    for name in diff.only_in_b:
        print(f"+ {name}  (only in B)")
    for c in diff.changed:
        print(f"~ {c.name}  {c.a.dtype}{c.a.shape} -> {c.b.dtype}{c.b.shape}")
    for d in diff.different:
        delta = "" if d.max_abs_diff is None else f"  max |a-b| = {d.max_abs_diff:.6g}"
        print(f"! {d.name}  values differ{delta}")
    print(
        f"{len(diff.equal)} equal, {len(diff.different)} different, {len(diff.changed)} changed dtype/shape, "
        f"{len(diff.only_in_a)} only in A, {len(diff.only_in_b)} only in B"
    )
    return 0


# -- convert --------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    done = reports.convert(args.src, args.dst, skip_strings=args.skip_strings, progress=_Progress("reading"))
    if done.skipped:
        print(
            f"ckptlib convert: warning: left out {len(done.skipped)} string tensor(s): {', '.join(done.skipped)}",
            file=sys.stderr,
        )
    if args.json:
        _emit_json(asdict(done))
    elif done.format == "checkpoint":
        print(f"wrote {done.tensors} tensor(s) to checkpoint {done.destination}")
    else:
        print(f"wrote {done.tensors} tensor(s) to {done.destination}")
    return 0


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors; keep that, shorter
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


EXIT_STATUS = "Exit status: 0 success, 1 damaged or missing input, 2 usage error."
PATH_HELP = "a prefix (dir/model.ckpt-7), a directory (its latest checkpoint) or one of the checkpoint's files"


def cmd_repair(args: argparse.Namespace) -> int:
    result = reports.repair_directory(args.directory, assume_idle=args.assume_idle)
    if not result.repaired:
        if args.json:
            print(json.dumps({"directory": result.directory, "repaired": False, "why": result.why}))
        else:
            print(f"{result.directory}: {result.why}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"directory": result.directory, "repaired": True}))
    else:
        print(f"{result.directory}: repaired")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckptlib",
        description="Inspect, verify, diff, convert and repair TensorFlow checkpoints. Checkpoints and "
        "directories may be local paths or URLs (s3://bucket/run).",
        epilog=EXIT_STATUS,
    )
    parser.add_argument("--version", action="version", version=f"ckptlib {ckptlib.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str, epilog: str = EXIT_STATUS
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        p.add_argument("--json", action="store_true", help="machine-readable output (strict JSON)")
        p.set_defaults(func=func)
        return p

    p = command("ls", cmd_ls, "List the checkpoints of a directory: step, time, size, shards, completeness.")
    p.add_argument("directory", help="a directory of checkpoints (the one holding their `checkpoint` state file)")
    p = command("inspect", cmd_inspect, "Show a checkpoint's tensors: dtype, shape, size, shard.")
    p.add_argument("path", help=PATH_HELP)
    p.add_argument("--tensor", metavar="NAME", help="print this tensor's values")
    p.add_argument("--all", action="store_true", help="print every tensor's values")
    p.add_argument("--stats", action="store_true", help="min/max/mean/std and NaN/Inf counts per tensor")
    p = command(
        "verify",
        cmd_verify,
        "Check everything a restore checks: every block, entry and checksum, each tensor's dtype, shape, "
        "place and slices. A directory: every checkpoint in it, one line each.",
        "Exit status: 0 all intact, 1 any problem (or nothing to verify), 2 usage error.",
    )
    p.add_argument(
        "path", help="a prefix, one of the checkpoint's files, or a directory (every checkpoint listed or in it)"
    )
    p = command(
        "diff",
        cmd_diff,
        "Compare two checkpoints tensor by tensor.",
        "Exit status: 0 when both checkpoints were read, whether or not they differ (use --json to act on "
        "the differences), 1 when either cannot be read, 2 usage error.",
    )
    p.add_argument("a", help=f"the first checkpoint: {PATH_HELP}")
    p.add_argument("b", help="the second checkpoint, given the same way")
    p.add_argument(
        "--atol",
        type=_tolerance,
        default=0.0,
        help="values within this absolute difference count as equal (default: %(default)s, exact)",
    )
    p = command(
        "convert",
        cmd_convert,
        "Convert between checkpoints and .npz / .safetensors files. TensorFlow's object graph "
        f"({OBJECT_GRAPH}) is left out of .safetensors, which cannot hold strings. The checkpoint may be "
        "a URL (s3://...); the .npz or .safetensors file must be a local path.",
    )
    p.add_argument("src", help=f"what to read: a local .npz or .safetensors file, or a checkpoint as {PATH_HELP}")
    p.add_argument(
        "dst", help="what to write: a local .npz or .safetensors file, or the prefix (or URL) of a new checkpoint"
    )
    p.add_argument(
        "--skip-strings",
        action="store_true",
        help="leave out string tensors (which .safetensors cannot hold), naming them on stderr",
    )
    p = command(
        "repair",
        cmd_repair,
        "Repair what interrupted saves left in a directory, whichever saver made them: put back "
        "checkpoints whose overwrite was killed, delete temporary files (on object stores: "
        "unfinished uploads and data without an index), finish noted deletions. Only while no "
        "save runs there; every other command only reads.",
        "Exit status: 0 repaired (or nothing to repair), 1 a save is running there (or the store "
        "cannot tell, as object stores cannot: see --assume-idle) or no such directory, 2 usage error.",
    )
    p.add_argument("directory", help="a directory of checkpoints (a path or a URL)")
    p.add_argument(
        "--assume-idle",
        action="store_true",
        help="repair even where the store cannot tell whether a save is running (S3): you say none is",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except reports.UsageError as e:
        print(f"ckptlib {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ckptlib.CheckpointError, OSError) as e:
        print(f"ckptlib {args.command}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # outside the reader, which says which checkpoint (a CheckpointError)
        print(f"ckptlib {args.command}: error: too large for this memory{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
