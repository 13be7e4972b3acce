"""The ``ckptlib`` command: list, inspect, verify, diff and convert checkpoints.

Uses only the public API. Exit codes: 0 success, 1 damaged or missing input, 2 usage error.
Every command takes ``--json`` for machine-readable output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

import ckptlib
from ckptlib.convert import export_arrays, import_arrays
from ckptlib.object_graph_view import ObjectGraph, path_text
from ckptlib.tree import STRUCTURE_KEY

_STEP = re.compile(r"-(\d+)$")


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
def _describe(prefix: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": os.path.basename(prefix), "prefix": prefix}
    match = _STEP.search(prefix)
    info["step"] = int(match.group(1)) if match else None
    info["complete"] = ckptlib.checkpoint_exists(prefix)
    try:
        with ckptlib.load_checkpoint(prefix, verify_checksums=False) as reader:
            files = reader.files
    except ckptlib.CheckpointError:
        files = [f for f in [prefix + ".index"] if os.path.exists(f)]
    present = [f for f in files if os.path.exists(f)]
    info["shards"] = max(len(files) - 1, 0)
    info["size"] = sum(os.path.getsize(f) for f in present)
    info["missing_files"] = [os.path.basename(f) for f in files if f not in present]
    return info


def cmd_ls(args: argparse.Namespace) -> int:
    directory = args.directory
    if not os.path.isdir(directory):
        raise ckptlib.CheckpointNotFoundError("no such directory", path=directory)
    state = ckptlib.get_checkpoint_state(directory)
    listed: list[tuple[str, float | None]] = []
    if state is not None:
        paths = list(state.all_model_checkpoint_paths)
        times: list[float | None] = list(state.all_model_checkpoint_timestamps)
        if len(times) != len(paths):
            times = [None] * len(paths)
        if state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
            times.append(None)
        listed = list(zip(paths, times, strict=True))
    latest = ckptlib.latest_checkpoint(directory)
    rows = []
    seen = set()
    for prefix, timestamp in listed:
        info = _describe(prefix)
        info["listed"] = True
        info["time"] = timestamp if timestamp is not None else _index_mtime(prefix)
        rows.append(info)
        seen.add(os.path.realpath(prefix))
    for prefix in _indexed_prefixes(directory, seen):  # complete or not: crash leftovers show
        info = _describe(prefix)
        info["listed"] = False
        info["time"] = _index_mtime(prefix)
        rows.append(info)
    for info in rows:
        info["latest"] = latest is not None and os.path.realpath(info["prefix"]) == os.path.realpath(latest)
    if args.json:
        _emit_json({"directory": directory, "latest": latest, "checkpoints": rows})
        return 0
    if not rows:
        print(f"{directory}: no checkpoints")
        return 0
    print(f"{'':2}{'STEP':>8}  {'TIME':19}  {'SIZE':>10}  {'SHARDS':>6}  {'STATUS':19}  NAME")
    for info in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["time"])) if info["time"] else "-"
        status = "complete" if info["complete"] else "INCOMPLETE"
        if not info["listed"]:
            status += " (unlisted)"
        step = "-" if info["step"] is None else str(info["step"])
        mark = "* " if info["latest"] else "  "
        print(
            f"{mark}{step:>8}  {when:19}  {_human(info['size']):>10}  {info['shards']:>6}  {status:19}  {info['name']}"
        )
    print(f"{len(rows)} checkpoint(s); * = latest" + (f" ({latest})" if latest else ""))
    return 0


def _index_mtime(prefix: str) -> float | None:
    try:
        return os.path.getmtime(prefix + ".index")
    except OSError:
        return None


# -- inspect --------------------------------------------------------------------------
def _stats(array: np.ndarray) -> dict[str, Any]:
    if array.dtype == object:
        return {}
    with np.errstate(all="ignore"):  # NaN payloads, overflowing squares: no RuntimeWarnings on stderr
        values = array.astype(np.float64) if array.dtype.kind not in "c" else array.astype(np.complex128)
        if values.size == 0:
            return {"nan": 0, "inf": 0}
        finite = values[np.isfinite(values)]
        out: dict[str, Any] = {
            "nan": int(np.isnan(values).sum()),
            "inf": int(np.isinf(values).sum()),
        }
        if finite.size and values.dtype.kind != "c":
            out.update(
                min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()), std=float(finite.std())
            )
    return out


def _format_value(array: np.ndarray) -> str:
    if array.dtype == object:
        return np.array2string(array, formatter={"object": repr})
    return np.array2string(array)


def cmd_inspect(args: argparse.Namespace) -> int:
    with ckptlib.load_checkpoint(args.path) as reader:
        names = reader.keys_list()
        if args.tensor is not None and args.tensor not in reader:
            raise ckptlib.TensorNotFoundError("no such tensor", path=reader.prefix, tensor=args.tensor)
        selected = [args.tensor] if args.tensor is not None else names
        want_values = args.all or args.tensor is not None
        try:
            graph = reader.object_graph
        except ckptlib.CorruptCheckpointError as e:  # the tensors can still be listed; verify says more
            print(f"ckptlib inspect: warning: object paths not shown: {e}", file=sys.stderr)
            graph = None
        width = max([len(name) for name in selected] + [4])
        header = f"{'NAME':{width}}  {'DTYPE':18}  {'SHAPE':18}  {'SIZE':>10}  SHARD\n"
        if args.json:  # the document around the rows, written as _emit_json would
            document = {"prefix": reader.prefix, "files": reader.files, "tensors": _ROWS, "total_bytes": _TOTAL}
            opening, rest = _json_text(document).split(_json_text(_ROWS))
            between, closing = rest.split(_json_text(_TOTAL))
            header = opening + "[\n"
        # One tensor at a time, printed before the next is read: a checkpoint of a million
        # tensors is never held in memory whole. The header waits for the first tensor, so
        # that nothing is printed if it cannot be read.
        total = 0
        for i, name in enumerate(selected):
            info = reader.tensor_info(name)
            total += info.nbytes
            array = reader.get_tensor(name) if args.stats or want_values else None
            stats = _stats(array) if args.stats and array is not None else None
            value = array if want_values else None
            sys.stdout.write(header if i == 0 else ",\n" if args.json else "")
            if args.json:
                row = _inspect_row(info, stats, value)
                if graph is not None:
                    row.update(_graph_fields(graph, name))
                sys.stdout.write(_json_text(row, indent=4))
            else:
                _print_inspect_row(info, width, stats, value, graph)
        if args.json:
            sys.stdout.write(("\n  ]" if selected else opening + "[]") + f"{between}{total}{closing}\n")
            return 0
        if not selected:
            sys.stdout.write(header)
        print(f"{len(selected)} tensor(s), {_human(total)} in {len(reader.files)} file(s): {reader.prefix}")
    return 0


# Stand for the rows and the total in inspect's --json document; no path holds a NUL.
_ROWS = "\0rows\0"
_TOTAL = "\0total\0"


def _json_text(data: Any, indent: int = 0) -> str:
    """``data`` as ``_emit_json`` writes it, every line but the first indented by ``indent``."""
    text = json.dumps(_finite(data), indent=2, default=str, allow_nan=False)
    return " " * indent + text.replace("\n", "\n" + " " * indent) if indent else text


def _inspect_row(info: ckptlib.reader.TensorInfo, stats: dict[str, Any] | None, value: np.ndarray | None) -> Any:
    row: dict[str, Any] = {
        "name": info.name,
        "dtype": info.dtype,
        "shape": list(info.shape),
        "nbytes": info.nbytes,
        "shard": info.shard,
        "slices": info.num_slices,
    }
    if stats is not None:
        row["stats"] = stats
    if value is not None:
        row["value"] = _json_value(value)
    return row


def _graph_fields(graph: ObjectGraph, name: str) -> dict[str, Any]:
    """A TF2 checkpoint's row extras: the object path naming the tensor, every path reaching
    it (TF's escaped spelling), and for a slot its name, variable and optimizer."""
    tensor = graph.tensors.get(name)
    if tensor is None:
        return {"object_path": None, "object_paths": [], "slot": None}
    slot = tensor.slot
    return {
        "object_path": path_text(tensor.path) if tensor.path else None,
        "object_paths": [path_text(p) for p in tensor.paths],
        "slot": None
        if slot is None
        else {"name": slot.name, "variable": path_text(slot.variable), "optimizer": path_text(slot.optimizer)},
    }


def _print_inspect_row(
    info: ckptlib.reader.TensorInfo,
    width: int,
    stats: dict[str, Any] | None,
    value: np.ndarray | None,
    graph: ObjectGraph | None = None,
) -> None:
    shard = "-" if info.shard is None else str(info.shard)
    if info.num_slices:
        shard += f" ({info.num_slices} slices)"
    print(f"{info.name:{width}}  {info.dtype:18}  {list(info.shape)!s:18}  {_human(info.nbytes):>10}  {shard}")
    fields = _graph_fields(graph, info.name) if graph is not None else {}
    if fields.get("object_path"):
        others = [p for p in fields["object_paths"] if p != fields["object_path"]]
        print(f"    object path: {fields['object_path']}" + (f"  (also {', '.join(others)})" if others else ""))
    if fields.get("slot"):
        slot = fields["slot"]
        print(f"    slot {slot['name']!r} of {slot['variable'] or '?'} for optimizer {slot['optimizer'] or '?'}")
    if stats:
        print("    " + "  ".join(f"{k}={_short(v)}" for k, v in stats.items()))
    if value is not None:
        for line in _format_value(value).splitlines():
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
    if os.path.isdir(args.path):
        return _verify_directory(args, args.path)
    result = _verify_one(args.path, must_exist=True)
    if args.json:
        _emit_json({k: v for k, v in result.items() if k != "labelled"})
    else:
        _print_verdict(result)
    return 0 if result["ok"] else 1


def _verify_one(path: str, *, must_exist: bool = False) -> dict[str, Any]:
    """Verify one checkpoint: ``prefix``, ``ok``, ``tensors`` and ``problems`` (messages),
    and ``labelled``: each problem with its label for the text output."""
    labelled: list[tuple[str, str]] = []
    count = 0
    prefix = str(path)
    if not must_exist and os.path.isdir(path):  # a state file listing a directory: not opened, as that would resolve it
        return _verdict_of(prefix, [("MISSING", f"{prefix}: a directory, not a checkpoint prefix")], 0)
    try:
        with ckptlib.load_checkpoint(path) as reader:
            prefix = reader.prefix
            labelled = [(_label(p), str(p)) for p in reader.verify(progress=_Progress("verifying"))]
            with contextlib.suppress(ckptlib.CheckpointError):  # an unreadable index: reported above
                count = len(reader)
    except ckptlib.CheckpointNotFoundError as e:
        if must_exist:
            raise
        labelled = [("MISSING", str(e))]
    except ckptlib.CheckpointError as e:
        labelled = [(_label(e), str(e))]
    return _verdict_of(prefix, labelled, count)


def _verdict_of(prefix: str, labelled: list[tuple[str, str]], count: int) -> dict[str, Any]:
    problems = [text for _, text in labelled]
    return {"prefix": prefix, "ok": not problems, "tensors": count, "problems": problems, "labelled": labelled}


def _label(problem: ckptlib.CheckpointError) -> str:
    return "UNSUPPORTED" if isinstance(problem, ckptlib.UnsupportedFeatureError) else "DAMAGED"


def _print_verdict(result: dict[str, Any]) -> None:
    for label, problem in result["labelled"]:
        print(f"{label:7}  {problem}")
    if result["problems"]:
        print(f"{result['prefix']}: {len(result['problems'])} problem(s) found")
    else:
        print(f"{result['prefix']}: OK, {result['tensors']} tensor(s) verified")


def _verify_directory(args: argparse.Namespace, directory: str) -> int:
    """Every checkpoint the state file lists, then every complete one it does not; reads only."""
    problems: list[str] = []
    try:
        listed = _listed_prefixes(directory)
    except ckptlib.CorruptCheckpointError as e:  # still check what the directory holds
        problems.append(str(e))
        listed = []
    seen = {os.path.realpath(prefix) for prefix in listed}
    unlisted = [p for p in _indexed_prefixes(directory, seen) if ckptlib.checkpoint_exists(p)]
    if not listed and not unlisted and not problems:
        raise ckptlib.CheckpointNotFoundError("no checkpoints in this directory", path=directory)
    results = [{**_verify_one(p), "listed": True} for p in listed]
    results += [{**_verify_one(p), "listed": False} for p in unlisted]
    bad = sum(not r["ok"] for r in results)
    ok = not bad and not problems
    if args.json:
        rows = [{k: v for k, v in r.items() if k != "labelled"} for r in results]
        _emit_json({"directory": directory, "ok": ok, "checkpoints": rows, "problems": problems})
        return 0 if ok else 1
    for problem in problems:
        print(f"DAMAGED  {problem}")
    for result in results:
        _print_verdict(result)
    if ok:
        print(f"{directory}: OK, {len(results)} checkpoint(s) verified")
    else:
        state = ", state file unreadable" if problems else ""
        print(f"{directory}: {bad} of {len(results)} checkpoint(s) with problems{state}")
    return 0 if ok else 1


def _listed_prefixes(directory: str) -> list[str]:
    """The prefixes the state file lists, oldest first, the latest last if not among them."""
    state = ckptlib.get_checkpoint_state(directory)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    return list(dict.fromkeys(paths))


def _indexed_prefixes(directory: str, seen: set[str]) -> list[str]:
    """Prefixes of the ``.index`` files in ``directory`` whose real path is not in ``seen``."""
    found = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".index"):
            prefix = os.path.join(directory, name[: -len(".index")])
            if os.path.realpath(prefix) not in seen:
                found.append(prefix)
    return found


# -- diff -----------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    with ckptlib.load_checkpoint(args.a) as a, ckptlib.load_checkpoint(args.b) as b:
        names_a, names_b = set(a.keys_list()), set(b.keys_list())
        only_a, only_b = sorted(names_a - names_b), sorted(names_b - names_a)
        changed: list[dict[str, Any]] = []
        equal: list[dict[str, Any]] = []
        different: list[dict[str, Any]] = []
        common = sorted(names_a & names_b)
        progress = _Progress("comparing")
        for i, name in enumerate(common):
            ia, ib = a.tensor_info(name), b.tensor_info(name)
            if ia.dtype != ib.dtype or ia.shape != ib.shape:
                changed.append(
                    {
                        "name": name,
                        "a": {"dtype": ia.dtype, "shape": list(ia.shape)},
                        "b": {"dtype": ib.dtype, "shape": list(ib.shape)},
                    }
                )
            else:
                same, max_diff = _compare(a.get_tensor(name), b.get_tensor(name), args.atol)
                (equal if same else different).append({"name": name, "max_abs_diff": max_diff})
            progress(i + 1, len(common))
    if args.json:
        _emit_json(
            {
                "only_in_a": only_a,
                "only_in_b": only_b,
                "changed": changed,
                "different": different,
                "equal": [e["name"] for e in equal],
            }
        )
        return 0
    for name in only_a:
        print(f"- {name}  (only in A)")
    for name in only_b:
        print(f"+ {name}  (only in B)")
    for c in changed:
        print(f"~ {c['name']}  {c['a']['dtype']}{c['a']['shape']} -> {c['b']['dtype']}{c['b']['shape']}")
    for d in different:
        diff = "" if d["max_abs_diff"] is None else f"  max |a-b| = {d['max_abs_diff']:.6g}"
        print(f"! {d['name']}  values differ{diff}")
    print(
        f"{len(equal)} equal, {len(different)} different, {len(changed)} changed dtype/shape, "
        f"{len(only_a)} only in A, {len(only_b)} only in B"
    )
    return 0


def _compare(x: np.ndarray, y: np.ndarray, atol: float) -> tuple[bool, float | None]:
    """Whether two same-shape tensors are equal (within ``atol``), and their max |x - y|.

    NaNs in the same places count as equal; strings compare exactly.
    """
    if x.dtype == object:
        return all(a == b for a, b in zip(x.flat, y.flat, strict=True)), None
    if x.size == 0:
        return True, 0.0
    wide = np.complex128 if x.dtype.kind == "c" else np.float64
    with np.errstate(all="ignore"):  # casting NaN payloads warns; keep stderr clean
        xf, yf = x.astype(wide), y.astype(wide)
        same = (xf == yf) | (np.isnan(xf) & np.isnan(yf))
        delta = np.where(same, 0.0, np.abs(xf - yf))
    delta[np.isnan(delta)] = np.inf
    max_diff = float(delta.max())
    if x.dtype.kind in "biu":  # exact, whatever float64 rounding says
        return bool(np.array_equal(x, y)) or (max_diff <= atol and atol > 0), max_diff
    return max_diff <= atol, max_diff


# -- convert --------------------------------------------------------------------------
# TensorFlow 2's record of the object graph: one string tensor in every tf.train.Checkpoint,
# structure rather than weights; .safetensors, which holds no strings, goes without it.
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
# String entries that describe the checkpoint rather than hold a value: left out of safetensors files
_METADATA = frozenset({OBJECT_GRAPH, STRUCTURE_KEY})


def cmd_convert(args: argparse.Namespace) -> int:
    src, dst = args.src, args.dst
    if _is_array_file(src) and _is_array_file(dst):
        raise _Usage("one of SRC and DST must be a checkpoint (array file to array file is not supported)")
    if _is_array_file(src):
        tensors, dtype_names = import_arrays(src)
        skipped = [name for name, a in tensors.items() if a.dtype == object] if args.skip_strings else []
        writer = ckptlib.BundleWriter(dst)
        for name, value in tensors.items():
            if name not in skipped:
                writer.add(name, value, dtype=dtype_names.get(name))
        writer.finish()
        return _converted(args, "checkpoint", len(tensors) - len(skipped), skipped)
    if not _is_array_file(dst):
        raise _Usage("DST must end in .npz or .safetensors (or SRC must, to make a checkpoint)")
    with ckptlib.load_checkpoint(src) as reader:
        names = reader.keys_list()
        dtype_names = {name: reader.dtype_name(name) for name in names}
        strings = [name for name in names if dtype_names[name] == "string"]
        skipped = strings if args.skip_strings else []
        if dst.endswith(".safetensors") and not args.skip_strings:
            skipped = [name for name in strings if name in _METADATA]
            refused = [name for name in strings if name not in _METADATA]
            if refused:
                raise ckptlib.InvalidTensorError(
                    f"safetensors cannot hold string tensors ({len(refused)} here: {', '.join(refused)}); "
                    "--skip-strings leaves them out",
                    tensor=refused[0],
                )
        wanted = [name for name in names if name not in set(skipped)]
        progress = _Progress("reading")
        tensors = {}
        for i, name in enumerate(wanted):
            tensors[name] = reader.get_tensor(name)
            progress(i + 1, len(wanted))
    export_arrays(tensors, dst, {name: dtype_names[name] for name in tensors})
    return _converted(args, "safetensors" if dst.endswith(".safetensors") else "npz", len(tensors), skipped)


def _converted(args: argparse.Namespace, kind: str, count: int, skipped: list[str]) -> int:
    if skipped:
        print(
            f"ckptlib convert: warning: left out {len(skipped)} string tensor(s): {', '.join(skipped)}",
            file=sys.stderr,
        )
    if args.json:
        _emit_json({"source": args.src, "destination": args.dst, "format": kind, "tensors": count, "skipped": skipped})
    elif kind == "checkpoint":
        print(f"wrote {count} tensor(s) to checkpoint {args.dst}")
    else:
        print(f"wrote {count} tensor(s) to {args.dst}")
    return 0


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _is_array_file(path: str) -> bool:
    return path.endswith((".npz", ".safetensors"))


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors; keep that, shorter
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


EXIT_STATUS = "Exit status: 0 success, 1 damaged or missing input, 2 usage error."
PATH_HELP = "a prefix (dir/model.ckpt-7), a directory (its latest checkpoint) or one of the checkpoint's files"


def cmd_repair(args: argparse.Namespace) -> int:
    if not ckptlib.repair(args.directory):
        message = "a save is running there (or its file system cannot lock): nothing was touched"
        if args.json:
            print(json.dumps({"directory": args.directory, "repaired": False, "why": message}))
        else:
            print(f"{args.directory}: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"directory": args.directory, "repaired": True}))
    else:
        print(f"{args.directory}: repaired")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckptlib",
        description="Inspect, verify, diff, convert and repair TensorFlow checkpoints.",
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
        f"({OBJECT_GRAPH}) is left out of .safetensors, which cannot hold strings.",
    )
    p.add_argument("src", help=f"what to read: a .npz or .safetensors file, or a checkpoint as {PATH_HELP}")
    p.add_argument("dst", help="what to write: a .npz or .safetensors file, or the prefix of a new checkpoint")
    p.add_argument(
        "--skip-strings",
        action="store_true",
        help="leave out string tensors (which .safetensors cannot hold), naming them on stderr",
    )
    p = command(
        "repair",
        cmd_repair,
        "Repair what interrupted saves left in a directory, whichever saver made them: put back "
        "checkpoints whose overwrite was killed, delete temporary files, finish noted deletions. "
        "Only while no save runs there; every other command only reads.",
        "Exit status: 0 repaired (or nothing to repair), 1 a save is running there or no such "
        "directory, 2 usage error.",
    )
    p.add_argument("directory", help="a directory of checkpoints")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except _Usage as e:
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
