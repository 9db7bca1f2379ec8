"""Fidelity of a pruned model to its dense original, measured the way the model's task is judged.

The task (``TASKS``) is found from the dense model's outputs (``task_of``) or given (``--task``):

- **classify**: one output of class scores ``[N, C]`` (C >= 2; size-1 dims such as ``[N, C, 1, 1]``
  ignored). Top-1 agreement (same argmax), top-5 agreement (the dense model's top-1 class is among
  the pruned model's top 5), KL(dense || pruned) of the softmaxes (of the scores themselves when
  the dense ones are already probabilities), and cosine of the score vectors.
- **dense**: a map with spatial dims ``[N, C, H, W]`` (H, W > 1): a text-detection probability map,
  segmentation logits. One channel is binarised at ``Task.threshold`` (``--task dense:THR``), else
  at Otsu's threshold of the dense map's values (set on the first batch, then kept; within
  [0.1, 0.9] for a probability map, so that an empty map is not cut inside its noise); several
  channels are per-pixel class scores, compared by their argmax, IoU per class and the mean over
  the classes either model predicts. IoU pools the pixels of all samples. Plus the mean absolute
  error of the raw maps.
- **detect**: a YOLO-style head ``[N, 4+K, A]`` (cx, cy, w, h and K class scores per anchor; also
  ``[N, A, 4+K]``), or boxes after NMS ``[N, D, 6]`` (x1, y1, x2, y2, score, class) or ``[D, 7]``
  (batch index first; the integral one of the last two columns is the class). Each model's boxes
  scored >= ``DETECT_SCORE`` (a raw head's after a per-class NMS at ``NMS_IOU``) are matched greedily,
  highest IoU first, within a class at IoU >= ``MATCH_IOU``: recall and precision against the dense
  model's boxes, F1, and the mean IoU of the matched pairs.
- **generic**: anything else: cosine and relative error ``||pruned - dense|| / ||dense||`` of each
  output, averaged over the outputs.

Each task has one headline ``Fidelity.score`` (higher is better) and one ``Fidelity.loss`` (lower is
better; what early stopping watches). ``compare`` gives one batch's metrics in plain numpy and
``Meter`` adds batches up, so distillation and the reconstruct selection use the same measure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UsageError
from ..graph.sessions import graph_session, make_session
from .activations import PIXELS_PER_BATCH, batched, fitting_batch

log = logging.getLogger(__name__)

TASKS = ("classify", "detect", "dense", "generic")
DETECT_SCORE = 0.25  # a box counts when its score is at least this (YOLO's usual confidence threshold)
NMS_IOU = 0.45  # a raw head's boxes of one class overlapping a better one by more than this are dropped
MATCH_IOU = 0.5  # a pruned box matches a dense one of its class at this IoU or more
PROBABILITY_CUT = (0.1, 0.9)  # a probability map's Otsu threshold is kept within these
MAX_BOXES = 300  # per image, the best-scored ones (as YOLO's exports keep)

SCORE = {"classify": "top1_agreement", "dense": "iou", "detect": "f1", "generic": "cosine"}  # higher is better
LOSS = {"classify": "kl", "dense": "mae", "detect": "1 - f1", "generic": "rel_error"}  # lower is better
LABELS = {"top1_agreement": "top-1 agreement", "top5_agreement": "top-5 agreement", "kl": "KL", "cosine": "cosine",
          "iou": "IoU", "mae": "mean abs error", "threshold": "threshold", "f1": "box F1", "recall": "recall",
          "precision": "precision", "matched_iou": "IoU of matched boxes", "dense_boxes": "dense boxes",
          "pruned_boxes": "pruned boxes", "rel_error": "relative error"}
FIGURES = {"classify": ("top1_agreement", "kl"), "dense": ("iou", "mae"), "detect": ("f1", "matched_iou"),
           "generic": ("cosine", "rel_error")}  # the two a compact table (a sweep's) shows
PERCENT = {"top1_agreement", "top5_agreement", "f1", "recall", "precision"}
COUNTS = {"dense_boxes", "pruned_boxes"}


@dataclass(frozen=True)
class Task:
    """How fidelity is measured: the task's name, the dense map's threshold (``dense:THR``; None: Otsu)
    and why this task was chosen."""

    name: str
    threshold: float | None = None
    reason: str = "given with --task"

    def __str__(self) -> str:
        return f"{self.name}:{self.threshold:g}" if self.threshold is not None else self.name


def parse_task(task: str | Task | None) -> Task | None:
    """``--task``'s value as a Task; None for auto (found from the outputs). Anything else is one
    UsageError line."""
    if task is None or isinstance(task, Task):
        return task
    text = str(task).strip()
    if text == "auto":
        return None
    name, _, thr = text.partition(":")
    if name not in TASKS or (thr and name != "dense"):
        raise UsageError(f"unknown --task {text!r}; choose one of auto, {', '.join(TASKS)} or dense:THR")
    if not thr:
        return Task(name)
    try:
        threshold = float(thr)
    except ValueError:
        threshold = float("nan")
    if not 0 < threshold < 1:
        raise UsageError(f"--task dense:THR needs a threshold in (0, 1), got {thr!r}")
    return Task("dense", threshold)


# --- which task ---------------------------------------------------------------------------------------


def _output_shapes(model: onnx.ModelProto | gs.Graph) -> list[tuple[str, list]]:
    """(name, dims) of the model's outputs; a free dim is its name or None."""
    if isinstance(model, gs.Graph):
        return [(t.name, list(t.shape) if t.shape is not None else []) for t in model.outputs]
    out = []
    for value in model.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim]
        out.append((value.name, dims))
    return out


def _big(d) -> bool:
    """A dim of more than one element (a free dim counts)."""
    return not isinstance(d, int) or d > 1


def task_of(model_or_graph: onnx.ModelProto | gs.Graph | None, output_shapes: Sequence | None = None,
            outputs: Sequence[np.ndarray] | None = None) -> Task:
    """The task the dense model's first output says, with the reason. ``output_shapes`` (one shape per
    output, or {name: shape}, e.g. captured ones) or ``outputs (one batch of arrays) replace the declared shapes;
    arrays also let a YOLO-style head be told from a sequence of softmaxes ([N, T, C]) and NMS'd rows
    ([D, 7]) from 7 class scores."""
    declared = _output_shapes(model_or_graph) if model_or_graph is not None else []
    names = [n for n, _ in declared]
    if outputs is not None:
        shapes = [list(a.shape) for a in outputs]
    elif output_shapes is not None:
        if isinstance(output_shapes, dict):  # {name: shape}, in the model's output order
            output_shapes = [output_shapes.get(n, dims) for n, dims in declared] or list(output_shapes.values())
        shapes = [list(s) for s in output_shapes]
    else:
        shapes = [dims for _, dims in declared]
    if not shapes:
        return Task("generic", reason="the model's outputs have no known shape")
    dims, first = shapes[0], (outputs[0] if outputs is not None else None)
    where = f"output {names[0]!r} " if names else "the first output "
    shape = f"[{', '.join(str(d) if d is not None else '?' for d in dims)}]"
    if first is not None and not np.issubdtype(first.dtype, np.floating):
        return Task("generic", reason=f"{where}{shape} holds {first.dtype} values, not scores")
    if len(dims) == 3 and dims[2] == 6 and (first is None or _boxes_ordered(first.reshape(-1, 6)[:, :4])):
        return Task("detect", reason=f"{where}{shape} reads as boxes after NMS [N, D, 6]")
    if len(dims) == 2 and dims[1] == 7 and first is not None and _nms_rows(first):
        return Task("detect", reason=f"{where}{shape} reads as boxes after NMS [D, 7] (batch index first)")
    if len(dims) == 3 and _head_dims(dims) and (first is None or _looks_like_head(first)):
        return Task("detect", reason=f"{where}{shape} reads as a YOLO-style head [N, 4+K, A] (boxes and K "
                                     "class scores per anchor)")
    spread = [d for d in dims[1:] if _big(d)]
    if len(spread) == 1 and isinstance(spread[0], int) and spread[0] >= 2 and len(shapes) == 1:
        return Task("classify", reason=f"{where}{shape} is one vector of {spread[0]} class scores per sample")
    if len(dims) == 4 and _big(dims[2]) and _big(dims[3]):
        kind = "a one-channel map, thresholded" if dims[1] == 1 else "per-pixel class scores, argmax over channels"
        return Task("dense", reason=f"{where}{shape} has spatial dims ({kind})")
    if len(spread) == 1 and isinstance(spread[0], int) and spread[0] >= 2:
        return Task("classify", reason=f"{where}{shape} is one vector of {spread[0]} class scores per sample "
                                       "(the other outputs are not compared)")
    return Task("generic", reason=f"{where}{shape} is neither class scores, a spatial map nor boxes")


def _head_dims(dims: list) -> bool:
    """[N, 4+K, A] or [N, A, 4+K] with K >= 1 and many more anchors than rows."""
    rows, cols = dims[1], dims[2]
    if not isinstance(rows, int) or not isinstance(cols, int):
        return False
    small, large = min(rows, cols), max(rows, cols)
    return small >= 5 and large >= 4 * small


def _head_rows(out: np.ndarray) -> np.ndarray:
    """A head as [N, 4+K, A] (the smaller of the last two axes holds the box and the class scores)."""
    return out if out.shape[1] <= out.shape[2] else out.transpose(0, 2, 1)


def _looks_like_head(out: np.ndarray) -> bool:
    """Widths and heights >= 0, class scores in [0, 1], and the anchors' scores not one softmax (a
    sequence of per-step class distributions, like a text recogniser's [N, T, C], looks alike)."""
    head = _head_rows(out)
    scores = head[:, 4:, :]
    if head[:, 2:4, :].min(initial=0.0) < 0 or scores.min(initial=0.0) < 0 or scores.max(initial=0.0) > 1:
        return False
    for axis in (1, 2):
        if np.allclose(out.sum(axis=axis), 1.0, atol=1e-3):
            return False
    return True


def _boxes_ordered(xyxy: np.ndarray) -> bool:
    return bool(np.all(xyxy[:, 2] >= xyxy[:, 0]) and np.all(xyxy[:, 3] >= xyxy[:, 1]))


def _integral(column: np.ndarray) -> bool:
    return bool(np.all(column == np.round(column)))


def _nms_rows(out: np.ndarray) -> bool:
    """[D, 7] rows of (batch index, x1, y1, x2, y2, score and class in either order)."""
    return (len(out) > 0 and _integral(out[:, 0]) and out[:, 0].min() >= 0 and _boxes_ordered(out[:, 1:5])
            and (_integral(out[:, 5]) or _integral(out[:, 6])))


# --- the measures -------------------------------------------------------------------------------------


def _log_probs(x: np.ndarray, probabilities: bool) -> np.ndarray:
    """Log-probabilities over the last axis: of the scores themselves when they are probabilities,
    else of their softmax."""
    if probabilities:
        return np.log(np.clip(x, 1e-12, None))
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _cosine_sum(a: np.ndarray, b: np.ndarray) -> float:
    """Sum over samples of the cosine of each sample's flattened outputs (1 where either is all zero
    and both are equal, 0 where only one is)."""
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
    both = na * nb
    cos = np.where(both > 0, (a2 * b2).sum(1) / np.where(both > 0, both, 1), (na == nb).astype(np.float64))
    return float(cos.sum())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut between two classes with the largest between-class
    variance (a histogram of ``bins`` bins over their range)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() == v.max():
        return float(v.min()) if v.size else 0.5
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def map_threshold(dense_map: np.ndarray) -> float:
    """Where a one-channel dense map is cut: Otsu's threshold of its values; for a probability map
    (values in [0, 1]) kept within [0.1, 0.9], so that a map with nothing on it (all near 0) is not
    cut inside its noise."""
    t = otsu_threshold(dense_map)
    if dense_map.size and dense_map.min() >= 0 and dense_map.max() <= 1:
        t = min(max(t, PROBABILITY_CUT[0]), PROBABILITY_CUT[1])
    return t


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4] (x1, y1, x2, y2): [n, m]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = NMS_IOU,
        limit: int = MAX_BOXES) -> np.ndarray:
    """Indices of the boxes greedy per-class NMS keeps, best score first (at most ``limit``)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap = box_iou(boxes[best:best + 1], boxes[rest])[0]
        order = rest[(overlap <= iou) | (classes[rest] != classes[best])]
    return np.asarray(keep, dtype=np.int64)


def match_boxes(dense: np.ndarray, dense_cls: np.ndarray, pruned: np.ndarray, pruned_cls: np.ndarray,
                min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (dense index, pruned index, IoU) of boxes of one class at IoU >=
    ``min_iou``, highest IoU first."""
    if not len(dense) or not len(pruned):
        return []
    iou = box_iou(dense, pruned)
    iou[dense_cls[:, None] != pruned_cls[None, :]] = 0.0
    pairs = np.argwhere(iou >= min_iou)
    pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]
    used_d, used_p, out = set(), set(), []
    for i, j in pairs:
        if i not in used_d and j not in used_p:
            used_d.add(i)
            used_p.add(j)
            out.append((int(i), int(j), float(iou[i, j])))
    return out


def _score_and_class(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, class) of NMS'd rows' last two columns: the integral one is the class (score first
    when both or neither are)."""
    first, second = cols[:, 0], cols[:, 1]
    if _integral(first) and not _integral(second):
        return second, first
    return first, second


def detections(out: np.ndarray, samples: int, score: float = DETECT_SCORE
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (boxes [n, 4] as x1, y1, x2, y2; classes [n]) of a detector's output, the boxes
    scored >= ``score`` (a raw head's after per-class NMS)."""
    out = np.asarray(out, dtype=np.float64)
    images = []
    if out.ndim == 2 and out.shape[1] == 7:  # [D, 7]: batch index, box, score and class
        s, c = _score_and_class(out[:, 5:7])
        for i in range(samples):
            keep = (out[:, 0] == i) & (s >= score)
            images.append((out[keep, 1:5], c[keep]))
        return images
    if out.ndim == 3 and out.shape[2] == 6:  # [N, D, 6]: box, score and class
        for rows in out:
            s, c = _score_and_class(rows[:, 4:6])
            keep = s >= score
            images.append((rows[keep, :4], c[keep]))
        return images
    if out.ndim != 3 or min(out.shape[1:]) < 5:
        raise UsageError(f"--task detect reads [N, 4+K, A], [N, D, 6] or [D, 7] outputs, not {list(out.shape)}")
    for rows in _head_rows(out):  # [4+K, A]
        cls_scores = rows[4:]
        s, c = cls_scores.max(axis=0), cls_scores.argmax(axis=0)
        keep = np.flatnonzero(s >= score)
        cx, cy, w, h = rows[:4, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        kept = nms(boxes, s[keep], c[keep])
        images.append((boxes[kept], c[keep][kept]))
    return images


@dataclass
class Fidelity:
    """Fidelity of a pruned model to the dense one on ``samples`` held-out samples, measured as
    ``task`` judges it (``metrics``, in display order; ``reason``: why that task)."""

    samples: int
    task: str
    metrics: dict[str, float]
    reason: str = ""

    @property
    def score_name(self) -> str:
        return SCORE[self.task]

    @property
    def score(self) -> float:
        """The task's headline, higher is better: top-1 agreement, IoU, box F1 or cosine."""
        return float(self.metrics[SCORE[self.task]])

    @property
    def loss_name(self) -> str:
        return LOSS[self.task]

    @property
    def loss(self) -> float:
        """The task's loss, lower is better (early stopping): KL, mean abs error, 1 - F1 or relative error."""
        if self.task == "detect":
            return 1.0 - float(self.metrics["f1"])
        return float(self.metrics[LOSS[self.task]])

    # a classifier's figures under their old names (None for other tasks)
    @property
    def top1_agreement(self) -> float | None:
        return self.metrics.get("top1_agreement")

    @property
    def kl(self) -> float | None:
        return self.metrics.get("kl")

    @property
    def cosine(self) -> float | None:
        return self.metrics.get("cosine")

    def items(self) -> list[tuple[str, str]]:
        """(label, value as shown) of every metric, in display order."""
        return [(LABELS.get(k, k), format_metric(k, v)) for k, v in self.metrics.items()]

    def headline(self) -> str:
        """``top-1 agreement 87.1%``, ``IoU 0.912``, ``box F1 93.0%``."""
        return f"{LABELS[self.score_name]} {format_metric(self.score_name, self.score)}"

    def describe(self) -> str:
        """Every metric in one line: ``IoU 0.912, mean abs error 0.0123, threshold 0.51``."""
        return ", ".join(f"{label} {value}" for label, value in self.items())

    def to_dict(self) -> dict:
        """Plain data for JSON: task, its metrics and headline; a classifier's figures also under
        their old top-level keys (top1_agreement, cosine, kl)."""
        out = {"samples": self.samples, "task": self.task, "reason": self.reason, "score_name": self.score_name,
               "score": self.score, "loss_name": self.loss_name, "loss": self.loss, "metrics": dict(self.metrics)}
        if self.task == "classify":
            out.update(top1_agreement=self.top1_agreement, cosine=self.cosine, kl=self.kl)
        return out


def measure_names(task: str | Task) -> tuple[str, str]:
    """(loss, score) of ``task`` as shown: ("KL", "top-1 agreement"), ("mean abs error", "IoU"), ..."""
    name = _name(task)
    loss = "1 - box F1" if name == "detect" else LABELS[LOSS[name]]
    return loss, LABELS[SCORE[name]]


def loss_and_score(task: str | Task, metrics: dict[str, float]) -> tuple[float, float]:
    """(loss, score) of ``compare``'s metrics for ``task`` (as ``Fidelity.loss`` and ``.score``)."""
    f = Fidelity(0, _name(task), metrics)
    return f.loss, f.score


def _name(task: str | Task) -> str:
    """The task's name (``dense:0.3`` -> dense)."""
    name = task.name if isinstance(task, Task) else str(task).partition(":")[0]
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return name


def format_metric(name: str, value: float) -> str:
    """A metric as shown: shares in percent, counts whole, the rest with 4 significant digits."""
    if name in PERCENT:
        return f"{value:.1%}"
    if name in COUNTS:
        return f"{value:.0f}"
    return f"{value:.4g}"


@dataclass
class Meter:
    """One task's metrics added up over batches: ``add(dense_outputs, pruned_outputs)`` per batch,
    then ``metrics()`` or ``fidelity()``. Pooled over all samples (IoU over all pixels, box counts
    over all images), so the order of batches does not matter except for the dense map's Otsu
    threshold, set on the first batch."""

    task: Task | None  # None ("auto"): found from the first batch's dense outputs
    samples: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    classes: dict[str, np.ndarray] = field(default_factory=dict)  # dense with C channels: per-class sums
    threshold: float | None = None

    def __post_init__(self) -> None:
        self.task = parse_task(self.task)
        if self.task is not None:
            self.threshold = self.task.threshold

    def _add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def add(self, dense: Sequence[np.ndarray], pruned: Sequence[np.ndarray], samples: int | None = None) -> None:
        """One batch: the two models' outputs in the same order. ``samples``: the batch's size (only
        needed for [D, 7] detections, whose rows do not show it)."""
        if self.task is None:
            self.task = task_of(None, outputs=dense)
            self.threshold = self.task.threshold
        a, b = np.asarray(dense[0], dtype=np.float64), np.asarray(pruned[0], dtype=np.float64)
        n = samples if samples is not None else len(a)
        self.samples += n
        getattr(self, f"_add_{self.task.name}")(dense, pruned, a, b, n)

    def _add_classify(self, dense, pruned, a: np.ndarray, b: np.ndarray, n: int) -> None:
        rows_a, rows_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        if a.ndim > 2 and sum(d > 1 for d in a.shape[1:]) > 1:  # scores along the last axis at every position
            rows_a, rows_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        per = len(rows_a) // max(len(a), 1)  # rows per sample
        k = min(5, rows_a.shape[1])
        top1_a = rows_a.argmax(-1)
        top_b = np.argsort(-rows_b, axis=-1, kind="stable")[:, :k]
        probabilities = bool(rows_a.min() >= 0 and np.allclose(rows_a.sum(-1), 1.0, atol=1e-3))
        la, lb = _log_probs(rows_a, probabilities), _log_probs(rows_b, probabilities)
        kl_rows = np.sum(np.exp(la) * (la - lb), axis=-1)
        self._add(top1=(top1_a == rows_b.argmax(-1)).sum() / per, top5=(top_b == top1_a[:, None]).any(-1).sum() / per,
                  kl=kl_rows.sum() / per, cosine=_cosine_sum(a, b))

    def _add_dense(self, dense, pruned, a: np.ndarray, b: np.ndarray, n: int) -> None:
        channels = a.shape[1] if a.ndim == 4 else 1
        a, b = a.reshape(len(a), channels, -1), b.reshape(len(b), channels, -1)
        self._add(abs_error=np.abs(a - b).sum(), values=a.size)
        if channels == 1:
            if self.threshold is None:
                self.threshold = map_threshold(a)
            ma, mb = a > self.threshold, b > self.threshold
            self._add(inter=np.sum(ma & mb), union=np.sum(ma | mb))
            return
        la, lb = a.argmax(1), b.argmax(1)
        ks = np.arange(channels)[:, None, None]
        inter = np.sum((la[None] == ks) & (lb[None] == ks), axis=(1, 2))
        union = np.sum((la[None] == ks) | (lb[None] == ks), axis=(1, 2))
        for key, value in (("inter", inter), ("union", union)):
            self.classes[key] = self.classes.get(key, 0) + value

    def _add_detect(self, dense, pruned, a: np.ndarray, b: np.ndarray, n: int) -> None:
        for (boxes_a, cls_a), (boxes_b, cls_b) in zip(detections(a, n), detections(b, n), strict=True):
            matches = match_boxes(boxes_a, cls_a, boxes_b, cls_b)
            self._add(matched=len(matches), dense_boxes=len(boxes_a), pruned_boxes=len(boxes_b),
                      matched_iou=sum(m[2] for m in matches))

    def _add_generic(self, dense, pruned, a, b, n: int) -> None:
        for i, (x, y) in enumerate(zip(dense, pruned, strict=True)):
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if x.ndim == 0:
                x, y = x.reshape(1), y.reshape(1)
            self._add(**{f"cosine{i}": _cosine_sum(x, y), f"rows{i}": len(x), f"sq_error{i}": np.sum((x - y) ** 2),
                         f"sq_dense{i}": np.sum(x ** 2)})

    def metrics(self) -> dict[str, float]:
        """The task's metrics so far, in display order (the headline first)."""
        if not self.samples:
            raise ValueError("no batches were added")
        s, name = self.sums, self.task.name
        if name == "classify":
            n = self.samples
            return {"top1_agreement": s["top1"] / n, "top5_agreement": s["top5"] / n, "kl": s["kl"] / n,
                    "cosine": s["cosine"] / n}
        if name == "dense":
            if self.classes:
                seen = self.classes["union"] > 0
                iou = float(np.mean(self.classes["inter"][seen] / self.classes["union"][seen])) if seen.any() else 1.0
                return {"iou": iou, "mae": s["abs_error"] / s["values"]}
            iou = s["inter"] / s["union"] if s["union"] else 1.0
            return {"iou": iou, "mae": s["abs_error"] / s["values"], "threshold": float(self.threshold)}
        if name == "detect":
            tp, nd, npr = s["matched"], s["dense_boxes"], s["pruned_boxes"]
            return {"f1": 2 * tp / (nd + npr) if nd + npr else 1.0, "recall": tp / nd if nd else 1.0,
                    "precision": tp / npr if npr else 1.0,
                    "matched_iou": s["matched_iou"] / tp if tp else (1.0 if nd + npr == 0 else 0.0),
                    "dense_boxes": nd, "pruned_boxes": npr}
        outputs = sum(k.startswith("rows") for k in s)
        cos = [s[f"cosine{i}"] / s[f"rows{i}"] for i in range(outputs)]
        rel = [np.sqrt(s[f"sq_error{i}"] / s[f"sq_dense{i}"]) if s[f"sq_dense{i}"] else float(s[f"sq_error{i}"] > 0)
               for i in range(outputs)]
        return {"cosine": float(np.mean(cos)), "rel_error": float(np.mean(rel))}

    def fidelity(self) -> Fidelity:
        return Fidelity(self.samples, self.task.name, self.metrics(), self.task.reason)


def compare(task: str | Task, dense_outputs: Sequence[np.ndarray], pruned_outputs: Sequence[np.ndarray],
            samples: int | None = None) -> dict[str, float]:
    """The task's metrics on one batch of outputs (the two models' outputs in the same order; task
    "auto": found from ``dense_outputs``)."""
    meter = Meter(task)
    meter.add(dense_outputs, pruned_outputs, samples)
    return meter.metrics()


def fidelity(dense: onnx.ModelProto | gs.Graph, pruned: onnx.ModelProto, samples: dict[str, np.ndarray], *,
             task: str | Task | None = "auto", batch_size: int = 32) -> Fidelity:
    """Compare the two models' outputs on ``samples`` ({input: [n, ...]}) as ``task`` judges them
    ("auto": ``task_of`` the dense model's outputs on the first batch; the reason is logged).
    ``dense`` may be a graph: its session then runs on the graph's own weight arrays, without a copy."""
    sess_d = graph_session(dense, arena=True) if isinstance(dense, gs.Graph) else make_session(dense)
    sess_p = make_session(pruned)
    names_d = [o.name for o in sess_d.get_outputs()]
    names_p = [o.name for o in sess_p.get_outputs()]
    chosen, meter = parse_task(task), None
    first = sess_d.get_inputs()[0].shape[:1]
    static = [d for d in first if isinstance(d, int) and d > 0]
    # large images a few at a time: both sessions' activations for 12 images at 736x992 took 8 GiB
    batch = static[0] if static else fitting_batch(samples, batch_size, 2 * PIXELS_PER_BATCH)
    for feed in batched(samples, batch):
        a = sess_d.run(names_d, feed)
        b = sess_p.run(names_p, feed)
        if meter is None:
            if chosen is None:
                chosen = task_of(dense, outputs=a)
                log.info("fidelity measured as %s: %s", chosen.name, chosen.reason)
            meter = Meter(chosen)
        meter.add(a, b, samples=len(next(iter(feed.values()))))
    if meter is None:
        raise UsageError("fidelity needs at least one held-out sample")
    return meter.fidelity()


__all__ = ["DETECT_SCORE", "MATCH_IOU", "TASKS", "Fidelity", "Meter", "Task", "box_iou", "compare", "detections",
           "fidelity", "loss_and_score", "map_threshold", "match_boxes", "measure_names", "nms", "otsu_threshold",
           "parse_task", "task_of"]
