"""What a TF2 checkpoint's object graph says about its tensors: every object path that
reaches each one, and which tensors are optimizer slots of which variable.

An object path is the tuple of (unescaped) edge names from the root object to a node, e.g.
``("model", "_functional", "_operations", "1", "_kernel")``. One variable can sit at several
paths: Keras 3 keeps each model weight under the model and again in the optimizer's
``_trainable_variables`` list, and TF stores it once, under the path its breadth-first walk met
first. A slot variable (``tf.compat.v1`` and Keras 2 optimizers) is no child of anything; the
optimizer node names it as slot ``m`` (say) of a variable node.

Hostile graphs stay cheap: node ids are checked by ``decode_graph``; paths are found breadth
first, at most ``MAX_PATHS`` per node and ``MAX_DEPTH`` edges long, never through the same node
twice (so cycles end), within ``MAX_STEPS`` steps (edges looked at plus path elements made;
more raises ``CorruptCheckpointError``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ckptlib.errors import CorruptCheckpointError
from ckptlib.format.object_graph import (
    ATTRIBUTES,
    OBJECT_GRAPH_KEY,
    VARIABLE_VALUE,
    TrackableObjectGraph,
    decode_graph,
    escape_local_name,
    unescape_local_name,
)

__all__ = ["MAX_DEPTH", "MAX_PATHS", "MAX_STEPS", "GraphTensor", "ObjectGraph", "SlotOf", "path_text"]

MAX_PATHS = 8  # paths kept per node, shortest first
MAX_DEPTH = 64  # edges; TF's own keys are a handful deep
MAX_STEPS = 4_000_000  # path steps walked in all, before the graph is refused as too tangled

Path = tuple[str, ...]


def path_text(path: Path) -> str:
    """A path as TF spells it in keys: each edge name escaped, joined with ``/``."""
    return "/".join(escape_local_name(p) for p in path)


@dataclass(frozen=True)
class SlotOf:
    """A tensor that is slot ``name`` of the variable at ``variable`` for the optimizer at
    ``optimizer`` (both object paths, ``()`` where no path reaches them). ``variable_key``: the
    variable's own tensor key, None where it has none."""

    name: str
    variable: Path
    variable_key: str | None
    optimizer: Path


@dataclass(frozen=True)
class GraphTensor:
    """One tensor the graph names. ``paths``: every object path reaching its node (at most
    ``MAX_PATHS``), shortest first; ``path``: the one that names it (see ``ObjectGraph``);
    ``attribute``: its attribute name (``VARIABLE_VALUE`` for variables); ``slot``: set for an
    optimizer slot."""

    key: str
    node: int
    attribute: str
    paths: tuple[Path, ...]
    path: Path
    slot: SlotOf | None = None


@dataclass(frozen=True)
class ObjectGraph:
    """The object graph of a TF2 checkpoint, by tensor key (``reader.object_graph``).

    A tensor reached by several paths is named by the path whose last edge is a name rather
    than a list position, then the shortest, then the first found: a Keras 3 weight is
    ``model/_functional/_operations/1/_kernel``, not ``optimizer/_trainable_variables/0``.
    """

    tensors: Mapping[str, GraphTensor]
    node_count: int

    @classmethod
    def parse(cls, data: bytes, keys: Collection[str], where: str | None = None) -> ObjectGraph:
        """The view of a serialized graph; ``keys``: the checkpoint's tensor keys, every one
        the graph names must be among them (TF's restore needs that too)."""
        graph = decode_graph(data, where)
        paths = _all_paths(graph, where)

        def primary(node: int) -> Path:
            found = paths.get(node, [])
            return min(found, key=lambda p: (bool(p) and p[-1].isdigit(), len(p))) if found else ()

        owner: dict[int, tuple[str, str]] = {}  # node -> (key, attribute) of its variable value
        for node_id, node in enumerate(graph.nodes):
            for attr in node.attributes:
                if attr.name == VARIABLE_VALUE:
                    owner.setdefault(node_id, (attr.checkpoint_key, attr.name))
        slots: dict[int, SlotOf] = {}
        for node_id, node in enumerate(graph.nodes):
            for ref in node.slot_variables:
                if ref.slot_variable_node_id in slots:  # the first reference counts; later ones cost nothing
                    continue
                variable = ref.original_variable_node_id
                slot = SlotOf(ref.slot_name, primary(variable), owner.get(variable, (None,))[0], primary(node_id))
                slots[ref.slot_variable_node_id] = slot
        stored = keys if isinstance(keys, (set, frozenset, Mapping)) else set(keys)
        tensors: dict[str, GraphTensor] = {}
        for node_id, node in enumerate(graph.nodes):
            for attr in node.attributes:
                key = attr.checkpoint_key
                problem = None
                if key in tensors:
                    problem = f"damaged object graph: two nodes name tensor {key!r}"
                elif key not in stored or key == OBJECT_GRAPH_KEY:
                    problem = f"damaged object graph: it names tensor {key!r}, which the checkpoint lacks"
                if problem:
                    raise CorruptCheckpointError(problem, path=where, tensor=OBJECT_GRAPH_KEY)
                found = tuple(paths.get(node_id, []))
                tensors[key] = GraphTensor(key, node_id, attr.name, found, primary(node_id), slots.get(node_id))
        return cls(MappingProxyType(dict(sorted(tensors.items()))), len(graph.nodes))

    def aliases(self) -> dict[str, str]:
        """``{key: stored key}`` for every key any path to a tensor spells (``attribute_key``
        of each path): how a restore finds a tensor that an object tree reaching it by another
        path (a Keras 3 model without its optimizer) names differently."""
        out: dict[str, str] = {}
        for key, tensor in self.tensors.items():
            for path in tensor.paths:
                spelled = "/".join([path_text(path), ATTRIBUTES, escape_local_name(tensor.attribute)])
                out.setdefault(spelled, key)
        return out

    def tree_path(self, key: str) -> Path:
        """Where ``restore(..., by="object_path")`` puts tensor ``key``: its path (plus the
        attribute's name unless that is ``VARIABLE_VALUE``); a slot under its optimizer's
        path, then the slot's name, then its variable's path; a tensor no path reaches (or
        no graph names) at its key's components, unescaped, ``.ATTRIBUTES`` left out."""
        tensor = self.tensors.get(key)
        if tensor is None or not (tensor.path or tensor.slot):
            return key_path(key)
        attribute = () if tensor.attribute == VARIABLE_VALUE else (tensor.attribute,)
        if tensor.slot is not None and not tensor.path:
            slot = tensor.slot
            return (*slot.optimizer, slot.name, *(slot.variable or key_path(slot.variable_key or key)), *attribute)
        return (*tensor.path, *attribute)


def key_path(key: str) -> Path:
    """A key's components with TF's escaping undone and ``.ATTRIBUTES`` (and a final
    ``VARIABLE_VALUE``) left out; a component that is not escaped TF-style stays as it is."""
    parts = key.split("/")
    if ATTRIBUTES in parts:
        at = parts.index(ATTRIBUTES)
        parts = parts[:at] + [p for p in parts[at + 1 :] if p != VARIABLE_VALUE]
    out = []
    for part in parts:
        try:
            out.append(unescape_local_name(part))
        except ValueError:
            out.append(part)
    return tuple(out)


def _all_paths(graph: TrackableObjectGraph, where: str | None) -> dict[int, list[Path]]:
    """Every node's paths from node 0, breadth first (so shortest first), bounded as the module says."""
    nodes = graph.nodes
    if not nodes:
        return {}
    found: dict[int, list[Path]] = {0: [()]}
    # a frontier entry: (node, path, ids of the nodes on the path); steps count edges looked at
    # and path elements made, which bounds time and memory alike
    frontier: list[tuple[int, Path, tuple[int, ...]]] = [(0, (), (0,))]
    steps = 0
    for _depth in range(MAX_DEPTH):
        following: list[tuple[int, Path, tuple[int, ...]]] = []
        for node_id, path, on_path in frontier:
            for child in nodes[node_id].children:
                steps += 1 + len(path)
                if steps > MAX_STEPS:
                    raise CorruptCheckpointError(
                        f"object graph too tangled: over {MAX_STEPS} steps to find its paths",
                        path=where,
                        tensor=OBJECT_GRAPH_KEY,
                    )
                target = child.node_id
                known = found.setdefault(target, [])
                if len(known) >= MAX_PATHS or target in on_path:
                    continue
                new = (*path, child.local_name)
                known.append(new)
                following.append((target, new, (*on_path, target)))
        if not following:
            break
        frontier = following
    return found
