"""Run a graph forward over the calibration samples one segment at a time, handing activations on.

sparsegpt's loop, on onnxruntime: a layer-by-layer solver asks for a layer's input, gets it for
every calibration batch, changes the layer's weights, and asks for the next layer's input. The walk
runs only the nodes not yet run that the asked tensor needs (one small session per segment, made
after the weights before it changed), and keeps the tensors later nodes still need ("the
frontier"). Each node runs once: a pass over the model per layer (what re-fitting did before, with
a session of the whole model per layer, 2xL passes for the dense and the pruned model) becomes one
pass for the whole re-fit.

Memory: the frontier over all calibration samples, typically a few feature maps per sample; a
tensor is dropped as soon as no node left to run reads it. Past ``budget`` bytes the batches of
newly made tensors go to .npy files in a temporary folder and are read back one batch at a time
(50 PP-OCR images at 736x992 hold several GiB of feature maps; each is written once, read a few
times); ``close`` removes the folder.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.scopes import body_reads
from ..graph.sessions import make_session

log = logging.getLogger(__name__)
FRONTIER_BUDGET = 2**30  # bytes of activations a walk keeps in memory before it writes them to disk


class Batches(list):
    """A tensor's value per batch: arrays, or paths of .npy files read back when indexed."""

    def __getitem__(self, b):  # noqa: ANN001, ANN204 - list's own signature
        item = super().__getitem__(b)
        return np.load(item) if isinstance(item, Path) else item

    def __iter__(self):  # noqa: ANN204
        return (self[b] for b in range(len(self)))

    def in_memory(self) -> int:
        """Bytes held in memory (not on disk)."""
        return sum(v.nbytes for v in list.__iter__(self) if isinstance(v, np.ndarray))


def _order(graph: gs.Graph) -> list[gs.Node]:
    """The graph's nodes in an order where every node comes after the nodes making its inputs
    (graph order when it already is; graphsurgeon's toposort would reorder the graph itself)."""
    made = {t.name for t in graph.inputs} | {n for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    pending, order = list(graph.nodes), []
    while pending:
        left = []
        for node in pending:
            if all(not t.name or t.name in made or isinstance(t, gs.Constant) for t in node.inputs):
                order.append(node)
                made.update(t.name for t in node.outputs)
            else:
                left.append(node)
        if len(left) == len(pending):  # a cycle or an input nothing makes: run them in graph order
            order.extend(left)
            break
        pending = left
    return order


def frontier_for(memory_budget: int | None) -> int:
    """Bytes of activations one walk keeps in memory: a quarter of --max-memory (at least 1 MiB),
    else ``FRONTIER_BUDGET``; the rest goes to disk."""
    return FRONTIER_BUDGET if memory_budget is None else max(2**20, memory_budget // 4)


class ForwardWalk:
    """A graph run forward over ``feeds`` (calibration batches) up to the tensors asked for so far.

    ``values(name)`` returns ``name``'s value for every batch, running first whatever it needs that
    has not run yet. Weights may change between calls: a node runs with the weights it has when a
    later ``values`` call first needs it."""

    def __init__(self, graph: gs.Graph, feeds: list[dict[str, np.ndarray]], budget: int | None = FRONTIER_BUDGET
                 ) -> None:
        self.graph = graph
        self.budget = budget  # None: everything in memory
        self.folder: Path | None = None
        self.written = 0  # files written to ``folder``
        self.nodes = _order(graph)
        self.producer = {t.name: i for i, node in enumerate(self.nodes) for t in node.outputs}
        self.inputs = {i: self._reads(node) for i, node in enumerate(self.nodes)}
        self.readers: dict[str, int] = defaultdict(int)  # nodes not yet run that read a tensor
        for names in self.inputs.values():
            for name in names:
                self.readers[name] += 1
        self.ran: set[int] = set()
        self.live: dict[str, Batches] = {t.name: Batches(feed[t.name] for feed in feeds) for t in graph.inputs
                                         if t.name in feeds[0]}
        self.held = sum(v.in_memory() for v in self.live.values())  # bytes of activations in memory
        self.kept: set[str] = set()  # asked-for tensors: kept until ``release``
        self.batches = len(feeds)

    def _reads(self, node: gs.Node) -> list[str]:
        """The computed tensors ``node`` reads: its inputs and what its subgraphs read around them."""
        names = [t.name for t in node.inputs if t.name and not isinstance(t, gs.Constant)]
        if node.subgraphs():
            tensors = self.graph.tensors()
            names += sorted(n for n in body_reads(node) if n in tensors and not isinstance(tensors[n], gs.Constant))
        return list(dict.fromkeys(names))

    def values(self, name: str) -> Batches:
        """The value of tensor ``name`` for each batch (kept until ``release(name)``)."""
        if name not in self.live:
            self._run(self._needed(name), name)
        self.kept.add(name)
        return self.live[name]

    def release(self, name: str) -> None:
        """The caller is done with ``name``: drop it unless a node still to run reads it."""
        self.kept.discard(name)
        if not self.readers.get(name):
            self._drop(name)

    def close(self) -> None:
        """Drop everything and remove the folder of activations written to disk."""
        self.live.clear()
        self.held = 0
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> ForwardWalk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self, name: str) -> None:
        batches = self.live.pop(name, None)
        if batches is None:
            return
        self.held -= batches.in_memory()
        for item in list.__iter__(batches):
            if isinstance(item, Path):
                item.unlink(missing_ok=True)

    def _keep(self, value: np.ndarray) -> np.ndarray | Path:
        """``value`` itself while the frontier is within the budget, else the .npy file it went to
        (in memory after all, with a warning, when the disk refuses it)."""
        if self.budget is None or self.held + value.nbytes <= self.budget:
            self.held += value.nbytes
            return value
        path = None
        try:
            if self.folder is None:
                self.folder = Path(tempfile.mkdtemp(prefix="onnxprune-walk-"))
                log.info("calibration activations past %.1f GiB go to %s", self.budget / 2**30, self.folder)
            self.written += 1
            path = self.folder / f"{self.written}.npy"
            np.save(path, value)
            return path
        except OSError as e:  # a full disk: keep this and what follows in memory, say so once
            if path is not None:
                path.unlink(missing_ok=True)  # a partly written file
            log.warning("could not write calibration activations to disk (%s): keeping them in memory", e)
            self.budget = None
            self.held += value.nbytes
            return value

    def _needed(self, name: str) -> list[int]:
        """The nodes not yet run that ``name`` depends on, in run order."""
        need, stack = set(), [name]
        while stack:
            tensor = stack.pop()
            i = self.producer.get(tensor)
            if tensor in self.live or i is None or i in need or i in self.ran:
                continue
            need.add(i)
            stack.extend(self.inputs[i])
        return sorted(need)

    def _run(self, segment: list[int], target: str) -> None:
        """Run the nodes ``segment`` (indices, in order) as one onnxruntime session, batch by batch,
        keeping ``target`` and what the nodes still to run read."""
        made = {t.name for i in segment for t in self.nodes[i].outputs}
        needs = list(dict.fromkeys(n for i in segment for n in self.inputs[i] if n not in made))
        inside = set(segment)
        # what a node outside the segment (or the caller) will still read
        later = {n for j, names in self.inputs.items() if j not in inside and j not in self.ran for n in names}
        later.add(target)
        outputs = [t.name for i in segment for t in self.nodes[i].outputs if t.name and t.name in later]
        tensors = self.graph.tensors()
        sub = gs.Graph(nodes=[self.nodes[i] for i in segment], inputs=[tensors[n] for n in needs],
                       outputs=[tensors[n] for n in outputs], opset=self.graph.opset,
                       import_domains=self.graph.import_domains)
        model = gs.export_onnx(sub, do_type_check=False)
        model.ir_version = min(model.ir_version, 10)
        del model.graph.input[:], model.graph.output[:], model.graph.value_info[:]
        # the inputs' types from their values; shapes free (batches may differ in size)
        for n in needs:
            v = self.live[n][0]
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), [None] * v.ndim))
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs)
        session = make_session(model)
        results: dict[str, Batches] = {n: Batches() for n in outputs}
        for b in range(self.batches):
            for n, value in zip(outputs, session.run(outputs, {n: self.live[n][b] for n in needs}), strict=True):
                results[n].append(self._keep(value))
        del session
        self.live.update(results)
        self.ran |= inside
        for i in segment:
            for n in self.inputs[i]:
                self.readers[n] -= 1
                if not self.readers[n] and n not in self.kept:
                    self._drop(n)


__all__ = ["ForwardWalk"]
