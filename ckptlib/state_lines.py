"""Fast state-file text, in the one layout TensorFlow and ckptlib write it in.

``state.parse_state`` and ``state.format_state`` (protobuf's text-format parser and printer)
are the reference. ``format_canonical`` must write exactly what the printer writes;
``parse_canonical`` must equal the parser on every text it accepts, and returns None, leaving
the text to the reference, on any other: comments, other spacing, single quotes, a field
given twice. ``tests/test_state_lines.py`` checks both on generated states and on mutated
texts. The reference parses about 130,000 lines a second, too slow for a state file listing
hundreds of thousands of paths; this handles a line per regular-expression match.

The layout, one field per line, as ``text_format.MessageToString`` writes it::

    model_checkpoint_path: "model.ckpt-3"
    all_model_checkpoint_paths: "model.ckpt-2"
    all_model_checkpoint_timestamps: 1795737976.199231
    last_preserved_timestamp: 1e-07
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from google.protobuf import text_encoding

# A string takes only the escapes protobuf's CEscape writes; any other goes to the reference.
_LINE = re.compile(
    r'(?P<s>model_checkpoint_path|all_model_checkpoint_paths): "(?P<text>(?:[^"\\\n]|\\[0-7nrt"\'\\])*)"'
    r"|(?P<n>all_model_checkpoint_timestamps|last_preserved_timestamp): "
    r"(?P<number>-?(?:inf|nan|(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?))"
)


def parse_canonical(text: str) -> tuple[str, list[str], list[float], float] | None:
    """``(model_checkpoint_path, all_model_checkpoint_paths, all_model_checkpoint_timestamps,
    last_preserved_timestamp)`` of a state file in the canonical layout; None otherwise."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    latest: list[str] = []
    paths: list[str] = []
    times: list[float] = []
    preserved: list[float] = []
    for match in map(_LINE.fullmatch, lines):
        if match is None:
            return None
        field = match.group("s")
        if field is not None:
            value = match.group("text")
            if "\\" in value:
                try:
                    value = text_encoding.CUnescape(value).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    return None
            (latest if field == "model_checkpoint_path" else paths).append(value)
        else:
            number = float(match.group("number"))
            (times if match.group("n") == "all_model_checkpoint_timestamps" else preserved).append(number)
    if len(latest) > 1 or len(preserved) > 1:  # a singular field given twice: the reference says what
        return None
    return (latest[0] if latest else "", paths, times, preserved[0] if preserved else 0.0)


def format_canonical(latest: str, paths: Sequence[str], times: Sequence[float], preserved: float) -> str:
    """State-file text, exactly as ``state.format_state`` (protobuf's printer) writes it."""
    lines = [f'model_checkpoint_path: "{_escape(latest)}"'] if latest else []
    lines += [f'all_model_checkpoint_paths: "{_escape(path)}"' for path in paths]
    lines += [f"all_model_checkpoint_timestamps: {float(time)!r}" for time in times]
    if preserved or math.copysign(1.0, preserved) < 0:  # proto3 leaves out a plain 0.0
        lines.append(f"last_preserved_timestamp: {float(preserved)!r}")
    return "".join(line + "\n" for line in lines)


def _escape(text: str) -> str:
    if text.isascii() and text.isprintable() and not any(c in text for c in "\"'\\"):
        return text
    return text_encoding.CEscape(text, True)
