"""The names of a V2 bundle's files, as TensorFlow spells them (``tensor_bundle.cc``)::

<prefix>.index                      the index table; its presence is what makes a bundle
<prefix>.data-00000-of-00002        data shards, numbered from 0, five digits each
<prefix>.data-00001-of-00002
"""

from __future__ import annotations

import re

INDEX_SUFFIX = ".index"
_DATA_SUFFIX = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def data_filename(prefix: str, shard_id: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


def index_filename(prefix: str) -> str:
    return f"{prefix}{INDEX_SUFFIX}"


def bundle_prefix(path: str) -> str | None:
    """The prefix of a bundle file (index or data shard); None for any other name."""
    if path.endswith(INDEX_SUFFIX):
        return path[: -len(INDEX_SUFFIX)]
    match = _DATA_SUFFIX.search(path)
    return path[: match.start()] if match else None


def is_data_file_of(name: str, prefix_name: str) -> bool:
    """Whether file ``name`` is a data shard (of any shard count) of the bundle named
    ``prefix_name`` (both names, not paths)."""
    match = _DATA_SUFFIX.search(name)
    return match is not None and name[: match.start()] == prefix_name
