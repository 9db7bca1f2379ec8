"""What the subgraphs of If, Loop and Scan nodes read from the graph around them.

An ONNX subgraph (an If branch, a Loop or Scan body) may use any tensor of an enclosing graph by
name: an initializer, a graph input or an activation. Those reads are not inputs of the node at
the top level, so a stage that walks only ``graph.nodes`` misses them: a channel removed from such
a tensor would reach the body with a size the body was not written for, and a weight changed in
place would change the body too.

Reads are found by name. graphsurgeon hands a body the enclosing graph's own tensor objects when it
imports a model, but ``Graph.copy`` gives a body its own copy of every constant it uses, so after a
copy only the name still says that the body's ``w`` is the main graph's ``w``. (A body's own
initializer that shadowed a name of the main graph would count as a read: frozen for nothing,
never broken.)
"""

from __future__ import annotations

import onnx_graphsurgeon as gs


def body_reads(node: gs.Node) -> set[str]:
    """Names of the tensors ``node``'s subgraphs (nested at any depth) use without making them."""
    found: set[str] = set()
    for sub in node.subgraphs():
        made = {t.name for t in sub.inputs} | {t.name for inner in sub.nodes for t in inner.outputs}
        used = {t.name for inner in sub.nodes for t in inner.inputs}
        for inner in sub.nodes:
            used |= body_reads(inner)
        found |= used - made
    found.discard("")  # an omitted optional input
    return found


def subgraph_reads(graph: gs.Graph) -> dict[str, str]:
    """{name: op} of the tensors of ``graph`` (activations, inputs, initializers its nodes use) that
    a subgraph of one of its nodes reads; the op is the first such node's (If, Loop, Scan)."""
    names = set(graph.tensors())
    reads: dict[str, str] = {}
    for node in graph.nodes:
        for name in sorted(body_reads(node) & names):
            reads.setdefault(name, node.op)
    return reads


def body_tensor_names(graph: gs.Graph) -> set[str]:
    """Names of every tensor any subgraph of ``graph`` uses, at any depth."""
    return {name for sub in graph.subgraphs(recursive=True) for name in sub.tensors()}


__all__ = ["body_reads", "body_tensor_names", "subgraph_reads"]
