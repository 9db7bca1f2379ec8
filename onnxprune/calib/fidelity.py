"""Fidelity of a pruned model to its dense original on held-out calibration samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.sessions import graph_session, make_session
from .activations import batched


@dataclass
class Fidelity:
    """Agreement of the first output: top-1 (argmax over the last axis), cosine, KL of softmaxes."""

    samples: int
    top1_agreement: float
    cosine: float
    kl: float


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fidelity(dense: onnx.ModelProto | gs.Graph, pruned: onnx.ModelProto, samples: dict[str, np.ndarray],
             batch_size: int = 32) -> Fidelity:
    """Compare the two models' first outputs on ``samples`` ({input: [n, ...]}). ``dense`` may be a
    graph: its session then runs on the graph's own weight arrays, without a copy."""
    sess_d = graph_session(dense, arena=True) if isinstance(dense, gs.Graph) else make_session(dense)
    sess_p = make_session(pruned)
    name_d, name_p = sess_d.get_outputs()[0].name, sess_p.get_outputs()[0].name
    agree, cos, kl, n = 0.0, 0.0, 0.0, 0
    first = sess_d.get_inputs()[0].shape[:1]
    static = [d for d in first if isinstance(d, int) and d > 0]
    for feed in batched(samples, static[0] if static else batch_size):
        a = sess_d.run([name_d], feed)[0].astype(np.float64)
        b = sess_p.run([name_p], feed)[0].astype(np.float64)
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        agree += float((a.argmax(-1) == b.argmax(-1)).mean() * a.shape[0])
        denom = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
        cos += float(np.sum(np.where(denom > 0, (a2 * b2).sum(1) / np.where(denom > 0, denom, 1), 1.0)))
        p, q = _softmax(a), _softmax(b)
        kl_each = np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)
        kl += float(kl_each.reshape(a.shape[0], -1).mean(1).sum())
        n += a.shape[0]
    return Fidelity(n, agree / n, cos / n, kl / n)
