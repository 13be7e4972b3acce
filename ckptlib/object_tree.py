"""Training-state trees as TF2 object graphs, written without TensorFlow.

``save(tree, prefix, object_graph=True)`` (and ``Saver``/``CheckpointManager`` with
``object_graph=True``) writes what ``tf.train.Checkpoint(**mirror).save`` writes for a mirror
of the tree: each container is an object, each leaf a variable, each edge named by its dict
key, field name, or list index (``"0"``, ``"1"``, ... as TF's list wrappers name them)::

    {"model": {"dense": {"kernel": w}}, "opt": [m]}
        node 0 (root) --model--> node 1 --dense--> node 3 --kernel--> node 5 (variable)
                      --opt----> node 2 --0------> node 4 (variable)
                      --save_counter--> node 6 (variable: int64, TF's counter)
    tensors: model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE   opt/0/.ATTRIBUTES/VARIABLE_VALUE
             save_counter/.ATTRIBUTES/VARIABLE_VALUE   _CHECKPOINTABLE_OBJECT_GRAPH   _CKPTLIB_STRUCTURE

Edge names are escaped in keys (``k.w/x`` -> ``k..w.Sx``, see ``format.object_graph``). Every
variable's one attribute is ``VARIABLE_VALUE`` with ``full_name`` its ``/``-joined path
(``model/dense/kernel``): TF1's ``Saver.restore``, on a name it cannot find, looks the
``full_name`` up in the graph and reads that variable's key.

Leaves: arrays, numpy and Python scalars, ``str`` and ``bytes`` are all variables (scalars
0-d, strings of TF's string dtype); ``None`` and empty containers have no object (a TF mirror
holds nothing there) and live only in ckptlib's structure record, which gives
``ckptlib.restore`` the tree back exactly. ``save_counter``, an int64 scalar child of the
root, is added unless the root has its own ``save_counter`` leaf.
"""

from __future__ import annotations

from collections.abc import Iterable

from ckptlib.format.object_graph import (
    ATTRIBUTES,
    VARIABLE_VALUE,
    TrackableObjectGraph,
    encode_graph,
    unescape_local_name,
)
from ckptlib.tree import STRUCTURE_KEY

__all__ = ["graph_of_keys"]

_SUFFIX = f"/{ATTRIBUTES}/{VARIABLE_VALUE}"


def graph_of_keys(keys: Iterable[str]) -> bytes:
    """The serialized ``TrackableObjectGraph`` whose variables are the object-graph keys
    among ``keys`` (``<escaped path>/.ATTRIBUTES/VARIABLE_VALUE``; others are skipped):
    nodes in breadth-first order from the root, children in the order keys first name them."""
    children: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = {(): {}}  # path -> child name -> path
    variables: dict[tuple[str, ...], str] = {}  # path -> key
    for key in keys:
        if key == STRUCTURE_KEY or not key.endswith(_SUFFIX):
            continue
        path = tuple(unescape_local_name(part) for part in key[: -len(_SUFFIX)].split("/"))
        variables[path] = key
        for depth in range(1, len(path) + 1):
            children.setdefault(path[:depth], {})
            children[path[: depth - 1]].setdefault(path[depth - 1], path[:depth])
    order: list[tuple[str, ...]] = [()]
    for path in order:  # grows as it goes: breadth first
        order.extend(children[path].values())
    ids = {path: i for i, path in enumerate(order)}
    graph = TrackableObjectGraph()
    for path in order:
        node = graph.nodes.add()
        node.has_checkpoint_values.value = True  # every object here has a variable at or below it
        for name, child in children[path].items():
            node.children.add(node_id=ids[child], local_name=name)
        if path in variables:
            node.attributes.add(name=VARIABLE_VALUE, full_name="/".join(path), checkpoint_key=variables[path])
    return encode_graph(graph)
