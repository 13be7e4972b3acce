"""TF2 object-based checkpoints: the object graph entry and the keys of its tensors.

A ``tf.train.Checkpoint`` stores, beside its tensors, one string tensor
``_CHECKPOINTABLE_OBJECT_GRAPH`` holding a serialized ``TrackableObjectGraph`` (see
``proto/trackable_object_graph.proto``): node 0 is the root object, each node lists its
children (edges named by the attribute or key that holds them) and its serialized tensors::

    node 0 (root) --model--> node 1 --dense--> node 2 --kernel--> node 3
                                                        attributes: VARIABLE_VALUE
                                                          checkpoint_key "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"

A tensor's key is the object path (edge names escaped, joined with ``/``), then
``/.ATTRIBUTES/`` and the attribute's escaped name; an optimizer slot's key is its variable's
path, ``/.OPTIMIZER_SLOT/``, the optimizer's path, ``/`` and the slot name, then the attribute.
Escaping (``trackable_utils.escape_local_name``) doubles ``.`` and writes ``/`` as ``.S``::

    edge "k.w/x"  ->  path component "k..w.Sx"
"""

from __future__ import annotations

from ckptlib.errors import CorruptCheckpointError
from ckptlib.format.proto.trackable_object_graph_pb2 import TrackableObjectGraph

__all__ = [
    "ATTRIBUTES",
    "OBJECT_GRAPH_KEY",
    "OPTIMIZER_SLOT",
    "VARIABLE_VALUE",
    "TrackableObjectGraph",
    "attribute_key",
    "decode_graph",
    "encode_graph",
    "escape_local_name",
    "unescape_local_name",
]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
ATTRIBUTES = ".ATTRIBUTES"
OPTIMIZER_SLOT = ".OPTIMIZER_SLOT"
VARIABLE_VALUE = "VARIABLE_VALUE"


def escape_local_name(name: str) -> str:
    """An edge name as a path component: ``.`` -> ``..``, ``/`` -> ``.S``."""
    return name.replace(".", "..").replace("/", ".S")


def unescape_local_name(component: str) -> str:
    """The edge name a path component stands for; raises ``ValueError`` for a lone ``.``
    or ``.`` before anything but ``.`` and ``S`` (no escaped name has those)."""
    out = []
    i = 0
    while i < len(component):
        char = component[i]
        if char != ".":
            out.append(char)
            i += 1
            continue
        follower = component[i + 1 : i + 2]
        if follower not in (".", "S"):
            raise ValueError(f"not an escaped name: {component!r}")
        out.append("." if follower == "." else "/")
        i += 2
    return "".join(out)


def attribute_key(path: list[str], attribute: str = VARIABLE_VALUE) -> str:
    """The bundle key of ``attribute`` of the object at ``path`` (unescaped edge names from the root)."""
    return "/".join([*(escape_local_name(p) for p in path), ATTRIBUTES, escape_local_name(attribute)])


def decode_graph(data: bytes, where: str | None = None) -> TrackableObjectGraph:
    """Parse an object graph, checking every node id it uses is a node of it."""
    try:
        graph = TrackableObjectGraph.FromString(data)
    except Exception as e:  # protobuf's DecodeError, or RecursionError on hostile nesting
        raise CorruptCheckpointError(f"damaged object graph: {e}", path=where, tensor=OBJECT_GRAPH_KEY) from None
    count = len(graph.nodes)
    for node in graph.nodes:
        ids = [c.node_id for c in node.children]
        ids += [i for s in node.slot_variables for i in (s.original_variable_node_id, s.slot_variable_node_id)]
        if any(not 0 <= i < count for i in ids):
            raise CorruptCheckpointError(
                "damaged object graph: a reference to a node it does not have", path=where, tensor=OBJECT_GRAPH_KEY
            )
    return graph


def encode_graph(graph: TrackableObjectGraph) -> bytes:
    """The serialized graph, as stored in the ``_CHECKPOINTABLE_OBJECT_GRAPH`` string tensor."""
    return graph.SerializeToString(deterministic=True)
