"""Names of the temporary files ckptlib makes beside a file it is replacing.

Temporary files carry ``TEMP_MARKER`` in their names, and files moved aside while a save
replaces a checkpoint of the same name carry ``ASIDE_MARKER``, each followed by a random
token, so that ones left behind by a killed save are recognised as ckptlib's own and
nothing else ever is. When a leftover is abandoned is for the store's save lock to say,
never for a file name or a time stamp.
"""

from __future__ import annotations

import os
import re
import secrets

TEMP_MARKER = ".ckptlib-tmp-"
# Files moved out of the way while a save replaces a checkpoint of the same name.
ASIDE_MARKER = ".ckptlib-old-"
# What follows the marker: 16 hex digits, or (older ckptlib) host, pid and 12 hex digits.
_TEMP_TAIL = re.compile(r"[0-9a-f]{16}|h[0-9a-f]{8}-\d+-[0-9a-f]{12}")


def temp_path(final_path: str, marker: str = TEMP_MARKER) -> str:
    """A unique temporary name beside ``final_path`` that ckptlib will recognise as its own."""
    return f"{final_path}{marker}{secrets.token_hex(8)}"


def aside_path(final_path: str) -> str:
    """Where an existing file is kept while a save replaces it (see ``commit.install_bundle``)."""
    return temp_path(final_path, ASIDE_MARKER)


def leftovers(directory: str, names: list[str], marker: str) -> list[tuple[str, str]]:
    """``(path, final_path)`` of the files among ``names`` (a listing of ``directory``)
    named with ``marker``. Only a caller that knows their writers are gone may touch them."""
    found = []
    for name in names:
        final, found_marker, tail = name.partition(marker)
        if found_marker and final and _TEMP_TAIL.fullmatch(tail):
            found.append((os.path.join(directory, name), os.path.join(directory, final)))
    return found
