"""Label-free recovery (``--distill``): fine-tune the pruned model towards the dense one.

The dense model is the teacher. Both run in PyTorch through ``torchgraph.TorchGraph`` (our own
interpreter of the ONNX graph; see there why not onnx2torch). The student's float initializers
that are learnable weights (Conv/Gemm/MatMul weights and biases, normalisation scales and
shifts, layer scales, embeddings: every float initializer of more than one value that is not a
shape, a BatchNorm running statistic, a Resize scale, a Clip bound, a Pad value or a Pow
exponent) are trained with Adam to match the teacher's outputs, by a loss that fits the task
(``fidelity.py``'s tasks): a classifier's first output by the KL divergence of its
temperature-softened softmax (T = ``TEMPERATURE``); probability maps (``dense``, values in [0, 1])
by binary cross-entropy against the teacher's map; a detection head by smooth-L1 on the raw
outputs, each channel scaled by the teacher's spread; anything else (and dense maps that are
not probabilities) by squared error relative to the teacher's mean square. Never a softmax over
an axis that is not classes. Beside it, the outputs of every Conv/Gemm/MatMul layer that kept
its shape (all of them after weight sparsity; after channel pruning, those whose output channels
all stayed) are matched to the dense layer's (squared error relative to the dense tensor's mean
square, weight ``FEATURES``); the dense model's are read from onnxruntime with those tensors
added as outputs. The teacher sees exactly the student's augmented batch.

Keeping near the dense weights: after each Adam step every trained tensor is pulled back toward
its starting value (the pruned model's, in the pruned shapes), ``w -= lr_t * PULL * (w - w_0)``:
weight decay toward the starting point instead of toward zero. Adam's steps are about ``lr`` per
value, so a value drifts at most about ``1 / PULL`` from where it started.

Augmentation of image data (``AUGMENT``, the choices the bench kept; ``AUGMENTATIONS`` lists all):
random resized crops, horizontal flips, colour jitter (brightness, contrast, saturation), random
scales (the image shrunk and reflect-padded back to its size), mixup and cutmix across the
calibration images (the teacher labels the mixed input, so no label mixing is needed). Other
4-D arrays that look like images get flips only; other samples are used as they are. Choices are
drawn from a generator seeded by ``seed``: the same seed gives the same batches.

Memory: a training step needs, per sample, the tensors autograd saves plus the teacher's tapped
features. They are measured once (autograd's saved tensors on one sample, at a small size when
the model takes any height and width) and the micro-batch is chosen to fit the budget
(``memory_budget``, from ``--max-memory``, else ``DEFAULT_TRAIN_MEMORY`` beyond what the process
holds already). When one sample at full size does not fit, a fully convolutional model trains on
random crops of the images at a lower resolution (multiples of the model's stride, at least
``MIN_CROP``); where that cannot be, or would go below ``MIN_CROP``, the forward pass runs in
``torch.utils.checkpoint`` segments (recomputed in the backward pass: about a third more time,
much less memory). Gradients are accumulated over micro-batches up to ``BATCH`` samples a step,
fewer for large images (at most ``BATCH_PIXELS`` pixels a step, at least one sample), so that a
step at 736x992 costs about what one of 16 samples at 224x224 does.

Masks stay fixed after weight sparsity (``keep_zeros``): every Conv/ConvTranspose/Gemm/MatMul
weight's zeros get zero gradient and are re-zeroed after each step, so N:M patterns survive
exactly. The held-out part of the calibration set (the one fidelity is measured on, held out by
whole files) decides early stopping: it is evaluated every ``EVAL_EVERY`` steps by the task's
measure (``fidelity.compare``: its loss, lower is better; its score is reported beside), the best
weights are kept, and training stops after ``PATIENCE`` evaluations without improvement. The
trained tensors are written back into the ONNX initializers by name, in their own dtype; the
caller verifies the result as usual.

Runs on CUDA when ``torch.cuda.is_available()``, else on the CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .. import ops
from ..errors import UsageError
from ..graph.shapes import machine_memory
from ..progress import Progress
from .data import CalibrationSet
from .fidelity import SCORE, Meter, format_metric, measure_names, parse_task, task_of

log = logging.getLogger(__name__)

# Defaults, measured on torchvision MobileNetV2 with ImageNet weights (README, "Recovery without labels").
DEFAULT_STEPS = 300  # optimiser steps of BATCH samples
DEFAULT_LR = 1e-4  # Adam, cosine decay to 0 over the steps
TEMPERATURE = 2.0
BATCH = 16
BATCH_PIXELS = BATCH * 224 * 224  # images: at most this many pixels a step (fewer samples when they are large)
EVAL_EVERY = 25  # steps between held-out evaluations
PATIENCE = 4  # evaluations without a better held-out loss before stopping
CROP_SCALE = (0.25, 1.0)  # random resized crop: share of the image's area
CROP_RATIO = (3 / 4, 4 / 3)
SCALE_RANGE = (0.5, 1.0)  # random scales: the image shrunk to this share of its sides, reflect-padded back
JITTER = 0.2  # colour jitter: brightness, contrast and saturation each scaled by up to 1 +- this
MIXUP = 0.4  # mixup: each sample blended with up to this share of another
FEATURES = 1.0  # weight of matching the outputs of every layer (relative squared error) beside the output loss
PULL = 0.0  # decay of each trained value toward its starting value, per unit of learning rate (see the docstring)
AUGMENTATIONS = ("crops", "flips", "jitter", "scales", "mixup", "cutmix")
AUGMENT = ("crops", "flips")  # the default for images (the bench's choice; README)
DEFAULT_TRAIN_MEMORY = 2 * 2**30  # bytes a training step may use without --max-memory
MIN_CROP = 128  # pixels: the shortest side a lower-resolution training crop may have

INSTALL = "pip install 'onnxprune[recover]' (or pip install torch)"


@dataclass
class Distillation:
    """What ``--distill`` did: steps, time, and the held-out measures before and after (the kept
    weights are those of ``best_step``). ``loss_*`` is the task's early-stopping loss (lower is
    better), ``score_*`` its headline score (higher is better), named by ``loss_name`` and
    ``score_name``; ``kl_*`` and ``agreement_*`` are the classifier's KL (T=1) and top-1 agreement
    (NaN for other tasks)."""

    max_steps: int
    steps: int  # optimiser steps run
    best_step: int  # the step whose weights were kept (0: none improved on the pruned model)
    seconds: float
    device: str
    lr: float
    temperature: float
    batch: int
    train_samples: int
    held_out: int
    augment: str
    tensors: int  # trained initializers
    values: int  # trained values
    masked: int  # of them, weights whose zeros stay zero
    kl_before: float
    kl_after: float
    agreement_before: float
    agreement_after: float
    stopped_early: bool
    curve: list[dict] = field(default_factory=list)  # {"step", "train_loss", "held_out_loss", "score"}
    task: str = "classify"
    loss_name: str = "KL"
    score_name: str = "top-1 agreement"
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    score_before: float = float("nan")
    score_after: float = float("nan")
    pull: float = PULL
    micro_batch: int = BATCH
    train_size: list[int] | None = None  # [height, width] of the training crops (None: the samples' own)
    checkpointed: bool = False
    memory_budget: int = 0  # bytes a training step was planned to use


def require_torch() -> None:
    """A one-line usage error naming what to install when PyTorch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(f"--distill needs PyTorch, which is not installed: {INSTALL}") from None


def check_supported(model: onnx.ModelProto) -> None:
    """Refuse, before any work, a model whose ops the PyTorch interpreter cannot run."""
    from .torchgraph import unsupported

    ops = unsupported(model)
    if ops:
        raise UsageError(f"--distill cannot run this model in PyTorch: no support for {', '.join(ops)} "
                         "(prune without --distill)")


def resolve_steps(distill: bool | int | None) -> int | None:
    """``distill=`` of ``prune``: True -> DEFAULT_STEPS, a positive int -> itself, None/False -> None."""
    if distill is None or distill is False:
        return None
    if distill is True:
        return DEFAULT_STEPS
    if isinstance(distill, (int, np.integer)) and distill > 0:
        return int(distill)
    raise UsageError(f"--distill takes a positive number of steps, got {distill!r}")


def resolve_lr(lr: float | None) -> float:
    if lr is None:
        return DEFAULT_LR
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise UsageError(f"--distill-lr must be a positive number, got {lr!r}")
    return float(lr)


def learnable(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(float initializers to train, those of them that are layer weights: Conv/ConvTranspose/Gemm/MatMul
    inputs whose zeros a sparsity mask keeps)."""
    floats = {t.name for t in model.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                                 onnx.TensorProto.DOUBLE)}
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer}
    data, not_data, weight_slot, layer_weights = set(), set(), set(), set()
    for node in model.graph.node:
        spec = ops.spec(node.op_type, node.domain)
        for port, name in enumerate(node.input):
            if name not in floats:
                continue
            # shapes, indices, statistics, bounds and exponents are constants but no weights
            (not_data if port in spec.not_trainable else data).add(name)
            if spec.layer or port in spec.learned:
                weight_slot.add(name)
            if spec.layer and port in (0, 1):  # a layer's weight (either side of a MatMul), not its bias
                layer_weights.add(name)
    train = {n for n in data - not_data if sizes[n] > 1 or n in weight_slot}
    return train, layer_weights & train


# ---------------------------------------------------------------------------------------------
# augmentation


def _image_axes(samples: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(height axis, width axis) of the single 4-D float input that looks like images (1 or 3 channels
    first or last), or None."""
    if len(samples) != 1:
        return None
    x = next(iter(samples.values()))
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        return None
    if x.shape[1] in (1, 3) and min(x.shape[2:]) >= 8:
        return 2, 3
    if x.shape[3] in (1, 3) and min(x.shape[1:3]) >= 8:
        return 1, 2
    return None


def resolve_augment(augment: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Augmentation names in ``AUGMENTATIONS`` order: a comma-separated string or a sequence; None:
    ``AUGMENT``; "none" or empty: no augmentation."""
    if augment is None:
        return AUGMENT
    names = [a.strip() for a in augment.split(",")] if isinstance(augment, str) else list(augment)
    names = [a for a in names if a and a != "none"]
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise UsageError(f"unknown augmentation {', '.join(unknown)}: choose from {', '.join(AUGMENTATIONS)}")
    return tuple(a for a in AUGMENTATIONS if a in names)


class _Augment:
    """The ``choices`` (names in ``AUGMENTATIONS``) applied to a batch, each sample drawn on its own,
    from ``generator``. ``axes``: the image axes (None: samples as they are); ``images`` False: flips
    only (arrays that look like images but are no decoded photos)."""

    def __init__(self, axes: tuple[int, int] | None, choices: tuple[str, ...] | bool, generator,
                 images: bool = True) -> None:
        if isinstance(choices, bool):  # the old signature: crops or not (plus flips)
            choices = ("crops", "flips") if choices else ("flips",)
        if axes is None:
            choices = ()
        elif not images:
            choices = tuple(c for c in choices if c == "flips") or ("flips",)
        self.axes, self.choices, self.gen = axes, tuple(choices), generator

    @property
    def description(self) -> str:
        if self.axes is None or not self.choices:
            return "none (samples as they are)"
        words = {"crops": "random resized crops", "flips": "horizontal flips", "jitter": "colour jitter",
                 "scales": "random scales", "mixup": "mixup", "cutmix": "cutmix"}
        named = [words[c] for c in self.choices]
        return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]

    def _uniform(self, lo: float, hi: float) -> float:
        import torch

        return lo + (hi - lo) * float(torch.rand((), generator=self.gen))

    def _crop(self, sample, height: int, width: int):
        import torch
        import torch.nn.functional as F  # noqa: N812

        for _ in range(10):
            area = height * width * self._uniform(*CROP_SCALE)
            ratio = math.exp(self._uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
            w = round(math.sqrt(area * ratio))
            h = round(math.sqrt(area / ratio))
            if 0 < w <= width and 0 < h <= height:
                break
        else:
            h, w = height, width
        top = int(torch.randint(0, height - h + 1, (), generator=self.gen))
        left = int(torch.randint(0, width - w + 1, (), generator=self.gen))
        return F.interpolate(sample[None, :, top:top + h, left:left + w], size=(height, width),
                             mode="bilinear", align_corners=False)[0]

    def _scale(self, sample, height: int, width: int):
        import torch.nn.functional as F  # noqa: N812

        s = self._uniform(*SCALE_RANGE)
        h, w = max(2, round(height * s)), max(2, round(width * s))
        small = F.interpolate(sample[None], size=(h, w), mode="bilinear", align_corners=False)
        top, left = (height - h) // 2, (width - w) // 2
        pads = (left, width - w - left, top, height - h - top)
        mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
        return F.pad(small, pads, mode=mode)[0]

    def _jitter(self, sample):
        """Brightness, contrast and saturation around the sample's own mean (the data may be
        normalised, so no absolute pixel range is assumed)."""
        mean = sample.mean()
        sample = (sample - mean) * self._uniform(1 - JITTER, 1 + JITTER) + mean  # contrast
        sample = sample + (self._uniform(-JITTER, JITTER) * sample.std())  # brightness
        if sample.shape[0] == 3:
            grey = sample.mean(0, keepdim=True)
            sample = grey + (sample - grey) * self._uniform(1 - JITTER, 1 + JITTER)  # saturation
        return sample

    def __call__(self, x):
        import torch

        if self.axes is None or not self.choices:
            return x
        h_axis, w_axis = self.axes
        channels_last = h_axis == 1
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        out = []
        height, width = x.shape[2], x.shape[3]
        for sample in x:
            if "crops" in self.choices:
                sample = self._crop(sample, height, width)
            if "scales" in self.choices and float(torch.rand((), generator=self.gen)) < 0.5:
                sample = self._scale(sample, height, width)
            if "jitter" in self.choices:
                sample = self._jitter(sample)
            if "flips" in self.choices and float(torch.rand((), generator=self.gen)) < 0.5:
                sample = sample.flip(-1)
            out.append(sample)
        y = torch.stack(out)
        if len(y) > 1 and "mixup" in self.choices:  # each sample blended with another: new inputs, same teacher
            lam = torch.rand((len(y), 1, 1, 1), generator=self.gen) * MIXUP
            y = (1 - lam) * y + lam * y[torch.randperm(len(y), generator=self.gen)]
        if len(y) > 1 and "cutmix" in self.choices:  # a box of another sample pasted in, half of the time
            other = y[torch.randperm(len(y), generator=self.gen)]
            y = y.clone()
            for i in range(len(y)):
                if float(torch.rand((), generator=self.gen)) >= 0.5:
                    continue
                share = math.sqrt(self._uniform(0.1, 0.5))
                h, w = max(1, round(height * share)), max(1, round(width * share))
                top = int(torch.randint(0, height - h + 1, (), generator=self.gen))
                left = int(torch.randint(0, width - w + 1, (), generator=self.gen))
                y[i, :, top:top + h, left:left + w] = other[i, :, top:top + h, left:left + w]
        return y.permute(0, 2, 3, 1).contiguous() if channels_last else y


def _random_crops(x, axes: tuple[int, int], size: tuple[int, int], generator):
    """Each sample cut to ``size`` (height, width) at a random place, no resizing (training at a lower
    resolution: the model sees the image at its own scale)."""
    import torch

    h_axis, w_axis = axes
    height, width = x.shape[h_axis], x.shape[w_axis]
    out = []
    for sample in x:
        top = int(torch.randint(0, height - size[0] + 1, (), generator=generator))
        left = int(torch.randint(0, width - size[1] + 1, (), generator=generator))
        out.append(sample.narrow(h_axis - 1, top, size[0]).narrow(w_axis - 1, left, size[1]))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# tasks: what the training matches and what the held-out measure is


def _resolve_task(task, teacher: onnx.ModelProto, outputs: list[np.ndarray]):
    """The ``fidelity.Task``: ``task`` as given (a name, ``dense:THR`` or a Task), else (None or
    "auto") the one the dense model's held-out outputs say."""
    chosen = parse_task(task)
    if chosen is None:
        chosen = task_of(teacher, outputs=outputs)
        log.info("distillation matches the outputs as %s: %s", chosen.name, chosen.reason)
    return chosen


def _probabilities(outputs: list[np.ndarray]) -> list[bool]:
    """Per output: whether its values all lie in [0, 1] (probability maps)."""
    return [bool(np.issubdtype(o.dtype, np.floating) and o.size and o.min() >= 0 and o.max() <= 1) for o in outputs]


def _scales(task: str, outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The teacher's spread per output: the root mean square, per channel (axis 1) for a detection
    head (boxes in pixels beside scores in [0, 1]), else one number."""
    scales = []
    for o in outputs:
        o = o.astype(np.float64)
        if task == "detect" and o.ndim >= 3:
            axes = tuple(a for a in range(o.ndim) if a != 1)
            s = np.sqrt((o ** 2).mean(axes)).reshape((1, -1) + (1,) * (o.ndim - 2))
        else:
            s = np.sqrt((o ** 2).mean()).reshape((1,) * o.ndim) if o.size else np.ones((1,) * o.ndim)
        scales.append(np.maximum(s, 1e-6).astype(np.float32))
    return scales


def _output_loss(task: str, teacher: list, student: list, scales: list, probabilities: list[bool]):
    """The training loss between the teacher's and the student's outputs (torch tensors), by task:
    a classifier's softened KL; a dense probability map's cross-entropy against the teacher's map,
    per-pixel class scores' KL over the channel axis (those are classes); a detection head's
    smooth-L1 per channel scale; else the squared error relative to the teacher's mean square."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    if task == "classify":
        return _kl(_logits(teacher), _logits(student), TEMPERATURE)
    losses = []
    for t, s, scale, prob in zip(teacher, student, scales, probabilities, strict=False):
        if not (t.is_floating_point() and s.is_floating_point()):
            continue
        t, s = t.float(), s.float()
        if task == "dense" and prob:  # a probability map: cross-entropy against the teacher's map
            losses.append(F.binary_cross_entropy(s.clamp(1e-6, 1 - 1e-6), t.clamp(0, 1)))
        elif task == "dense" and t.dim() == 4 and t.shape[1] > 1:  # per-pixel class scores
            rows = t.movedim(1, -1).reshape(-1, t.shape[1]), s.movedim(1, -1).reshape(-1, s.shape[1])
            losses.append(_kl(*rows, TEMPERATURE))
        elif task == "detect":
            scale = torch.as_tensor(scale, device=s.device)
            losses.append(F.smooth_l1_loss(s / scale, t / scale, beta=0.1))
        else:
            scale = float(np.asarray(scale).reshape(-1)[0])
            losses.append(((s - t) ** 2).mean() / scale ** 2)
    return sum(losses) / len(losses) if losses else torch.zeros(())


def _measure(task, dense: list[np.ndarray], pruned: list[np.ndarray]):
    """``fidelity.Fidelity`` of the held-out outputs as ``task`` judges them (its ``loss`` decides
    early stopping)."""
    meter = Meter(task)
    meter.add(dense, pruned)
    return meter.fidelity()


# ---------------------------------------------------------------------------------------------
# training


def _logits(outputs):
    """The first output as [rows, classes] (softmax over its last axis, like fidelity.py)."""
    y = outputs[0]
    return y.reshape(-1, y.shape[-1]).float()


def _kl(teacher, student, temperature: float = 1.0):
    """Mean over rows of KL(softmax(t/T) || softmax(s/T)), times T² (the gradient scale of T=1)."""
    import torch

    t = torch.log_softmax(teacher / temperature, -1)
    s = torch.log_softmax(student / temperature, -1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2


def _float32(array: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(array))
    return x.float() if x.is_floating_point() else x


def _layout(x):
    """4-D tensors channels-last (the layout the module's weights are in)."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class _Teacher:
    """The dense model's outputs on ``device``: onnxruntime on the CPU (several times faster there
    than torch), the PyTorch interpreter on a GPU."""

    def __init__(self, model: onnx.ModelProto, device, dtypes: dict, taps: tuple[str, ...] = ()) -> None:
        self.device, self.dtypes, self.taps = device, dtypes, taps
        self.outputs = [o.name for o in model.graph.output]
        if device.type == "cpu":
            from ..graph.sessions import make_session

            if taps:  # the tapped tensors become outputs of a copy
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in taps)
                model = copy
            self.sess = make_session(model)
        else:
            import torch

            from .torchgraph import TorchGraph

            self.net = TorchGraph(model).to(device, memory_format=torch.channels_last).eval()

    def __call__(self, feed: dict, taps: bool = False):
        """The graph outputs (a list), and with ``taps`` the tapped tensors too."""
        import torch

        if self.device.type == "cpu":
            names = [*self.outputs, *self.taps] if taps else self.outputs
            ys = self.sess.run(names, {k: np.ascontiguousarray(v.numpy(), dtype=self.dtypes[k])
                                       for k, v in feed.items()})
            ys = [torch.from_numpy(y) for y in ys]
        else:
            with torch.no_grad():
                ys = self.net({k: _layout(v.to(self.device)) for k, v in feed.items()}, self.taps if taps else ())
        n = len(self.outputs)
        return (ys[:n], ys[n:]) if taps else ys[:n]


def _taps(teacher: onnx.ModelProto, student: onnx.ModelProto) -> tuple[str, ...]:
    """Outputs of the student's Conv/ConvTranspose/Gemm/MatMul layers that the teacher has too
    (by name), other than the graph outputs."""
    dense = {o for node in teacher.graph.node for o in node.output}
    outputs = {o.name for o in student.graph.output}
    return tuple(node.output[0] for node in student.graph.node
                 if ops.spec(node.op_type, node.domain).layer and node.output[0] in dense
                 and node.output[0] not in outputs)


def _feature_loss(matched: list[bool], dense, pruned, device):
    """Mean over the taps whose shapes agree (layers that kept all their outputs) of the squared
    error relative to the dense tensor's mean square."""
    losses = []
    for same, d, p in zip(matched, dense, pruned, strict=True):
        if not same:
            continue
        d = d.to(device)
        losses.append(((p.float() - d.float()) ** 2).mean() / (d.float().pow(2).mean() + 1e-8))
    return sum(losses) / len(losses) if losses else 0.0


def _static_batch(model: onnx.ModelProto) -> int | None:
    init = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in init:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


def _free_spatial(model: onnx.ModelProto, axes: tuple[int, int] | None) -> bool:
    """Whether the model's single input takes any height and width (its image axes are not fixed)."""
    if axes is None:
        return False
    init = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init]
    if len(inputs) != 1:
        return False
    dims = inputs[0].type.tensor_type.shape.dim
    return len(dims) == 4 and not any(dims[a].HasField("dim_value") for a in axes)


def _forward(net, feed: dict, taps: tuple[str, ...] = (), segments: int = 0) -> list:
    """``net(feed, taps)``; with ``segments`` the node list runs in that many pieces under
    ``torch.utils.checkpoint``: each piece keeps only its inputs for the backward pass and runs
    again there (the tensors alive between pieces are its inputs and outputs)."""
    if segments <= 1:
        return net(feed, taps)
    from torch.utils.checkpoint import checkpoint

    nodes, last_use = net._nodes, net._last_use
    keep = set(taps) | set(net.outputs)
    bounds = np.linspace(0, len(nodes), segments + 1).astype(int)
    env = dict(feed)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a == b:
            continue
        names_in = tuple(env)
        made = [o for i in range(a, b) for o in nodes[i][2] if o]
        names_out = tuple(o for o in made if o in keep or last_use.get(o, -1) >= b)

        def piece(*values, a=a, b=b, names_in=names_in, names_out=names_out):
            local = dict(zip(names_in, values, strict=True))
            for fn, ins, outs, attrs, ctx in nodes[a:b]:
                args = [None if not n else local[n] if n in local else net._value(n) for n in ins]
                for n, v in zip(outs, fn(args, attrs, ctx), strict=False):
                    if n:
                        local[n] = v
            return tuple(local[n] for n in names_out)

        results = checkpoint(piece, *(env[n] for n in names_in), use_reentrant=False)
        env.update(zip(names_out, results, strict=True))
        env = {n: v for n, v in env.items() if n in keep or last_use.get(n, -1) >= b}
    return [env[n] if n in env else net._value(n) for n in net.outputs] + [env[t] for t in taps]


def _saved_bytes(net, feed: dict, taps: tuple[str, ...], segments: int = 0) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward on ``feed`` (each
    storage counted once), plus the tapped tensors (the teacher's copies of them are as large)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ys = _forward(net, feed, taps, segments)
    extra = sum(y.numel() * y.element_size() for y in ys[len(ys) - len(taps):]) if taps else 0
    largest = max((y.numel() * y.element_size() for y in ys), default=0)
    del ys
    return sum(seen.values()) + 2 * extra + 2 * largest


@dataclass
class TrainPlan:
    """How a step fits the memory budget: samples per forward pass, the training crop (None: the
    samples' own size), checkpointed segments (0: none) and the bytes planned per sample."""

    micro: int
    size: tuple[int, int] | None
    segments: int
    per_sample: int
    budget: int


def _resident() -> int:
    """Bytes this process holds now (0 where /proc cannot say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (2**12)
    except (OSError, ValueError, IndexError):
        return 0


def training_budget(memory_budget: int | None) -> int:
    """Bytes a training step may use: ``memory_budget`` (the whole process's, ``--max-memory``) less
    what the process holds already, else ``DEFAULT_TRAIN_MEMORY``; at least 64 MiB."""
    if memory_budget is None:
        return int(min(DEFAULT_TRAIN_MEMORY, machine_memory() // 4))
    return max(64 * 2**20, int(memory_budget) - _resident())


def plan_training(net, sample: dict, axes: tuple[int, int] | None, free_spatial: bool, taps: tuple[str, ...],
                  budget: int, batch: int, static_batch: int | None, stride: int = 32) -> TrainPlan:
    """The micro-batch, training crop and checkpointing that fit ``budget`` bytes, from autograd's
    saved tensors on one sample (``sample``: a batch of one); at a quarter of the sides when the
    model takes any size (the memory grows with the pixels), else at full size."""
    import torch

    height = width = None
    if axes is not None:
        x = next(iter(sample.values()))
        height, width = x.shape[axes[0]], x.shape[axes[1]]
    unit = math.gcd(stride, height, width) if height else 1

    def probe_size(h: int, w: int) -> dict:
        return {k: _random_crops(v, axes, (h, w), torch.Generator().manual_seed(0)) for k, v in sample.items()}

    def per_sample(segments: int) -> int:
        if free_spatial and height * width > 4 * (4 * unit) ** 2:
            h, w = max(unit * 4, height // 2 // unit * unit), max(unit * 4, width // 2 // unit * unit)
            try:
                return int(_saved_bytes(net, probe_size(h, w), taps, segments) * height * width / (h * w))
            except RuntimeError:  # the model wants its own size after all
                pass
        return _saved_bytes(net, sample, taps, segments)

    fixed = static_batch or 0
    cost = per_sample(0)
    if cost * max(fixed, 1) <= budget:
        micro = fixed or max(1, min(batch, budget // max(cost, 1)))
        return TrainPlan(micro, None, 0, cost, budget)
    croppable = free_spatial and not fixed
    floor = (min(MIN_CROP, height), min(MIN_CROP, width)) if croppable else (0, 0)

    def crop(cost: int) -> tuple[int, int]:
        """The largest crop (multiples of ``unit``) whose pixels fit the budget at ``cost`` for the
        full size; never below ``floor``."""
        side = math.sqrt(budget / cost)
        return max(floor[0], int(height * side) // unit * unit), max(floor[1], int(width * side) // unit * unit)

    if croppable and crop(cost)[0] * crop(cost)[1] * cost <= budget * height * width:
        return TrainPlan(1, crop(cost), 0, cost, budget)  # fits without going below MIN_CROP
    segments = checkpoint_segments(len(net._nodes))
    saved = per_sample(segments)
    if saved >= cost:  # too few nodes between the pieces' boundaries: checkpointing does not pay
        segments, saved = 0, cost
    if croppable and saved > budget:
        return TrainPlan(1, crop(saved), segments, saved, budget)
    return TrainPlan(fixed or max(1, min(batch, budget // max(saved, 1))), None, segments, saved, budget)


def samples_per_step(n: int, axes: tuple[int, int] | None, samples: dict, pixels: int | None = None) -> int:
    """Samples per optimiser step: ``BATCH`` (at most ``n``), fewer for images of more than
    ``BATCH_PIXELS / BATCH`` pixels (``pixels``: a training crop's; None: the samples' own)."""
    batch = min(BATCH, n)
    if axes is not None:
        x = next(iter(samples.values()))
        pixels = pixels or x.shape[axes[0]] * x.shape[axes[1]]
        batch = min(batch, max(1, BATCH_PIXELS // pixels))
    return batch


def checkpoint_segments(nodes: int) -> int:
    """Pieces of a checkpointed forward pass: about the square root of the node count (each piece
    then holds about as many tensors as there are boundaries), 2 to 32."""
    return int(np.clip(round(math.sqrt(nodes)), 2, 32))


def distill_model(teacher: onnx.ModelProto, student: onnx.ModelProto, train: CalibrationSet, held_out: CalibrationSet,
                  *, steps: int, lr: float | None = None, keep_zeros: bool = False, images: bool | None = None,
                  task=None, pull: float | None = None, augment: str | tuple[str, ...] | None = None,
                  memory_budget: int | None = None, progress: Progress | None = None,
                  seed: int = 0) -> tuple[onnx.ModelProto, Distillation]:
    """Fine-tune ``student`` (the pruned model) to the outputs of ``teacher`` (the dense model).

    Trains on ``train`` (augmented), early-stops on ``held_out`` by the task's measure (``task``: a
    name of ``fidelity.TASKS``, ``dense:THR``, a ``fidelity.Task``, or None/"auto": found from the
    dense outputs); ``keep_zeros`` keeps the zeros of every layer weight (after weight sparsity).
    ``pull``: decay toward the starting weights (None: ``PULL``). ``augment``: augmentation names
    (None: ``AUGMENT``) for image data; ``images``: whether ``train`` holds decoded images (None:
    ``train.images``; other 4-D image-like arrays get flips only). ``memory_budget``: bytes the
    whole process may use (``--max-memory``; None: ``DEFAULT_TRAIN_MEMORY`` for training).
    Returns a copy of ``student`` with the trained initializers written back by name, and what happened.
    """
    import torch

    from .torchgraph import TorchGraph

    start = time.perf_counter()
    step_msg = progress or (lambda msg: log.debug("%s", msg))
    lr = resolve_lr(lr)
    pull = PULL if pull is None else float(pull)
    if not math.isfinite(pull) or pull < 0:
        raise UsageError(f"the pull toward the dense weights must be a number >= 0, got {pull!r}")
    choices = resolve_augment(augment)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(seed)
    names, layer_weights = learnable(student)
    step_msg("distillation: building the pruned model in PyTorch")
    net = TorchGraph(student, names).to(device, memory_format=torch.channels_last)  # faster convolutions
    taps = _taps(teacher, student) if FEATURES else ()
    teach = _Teacher(teacher, device, {name: train.samples[name].dtype for name in train.samples}, taps)
    weights = net.named_weights()
    masks = {}
    if keep_zeros:
        for name in layer_weights:
            mask = weights[name].detach() != 0
            if not bool(mask.all()):
                masks[name] = mask
    inputs = net.inputs
    if images is None:
        images = train.images
    axes = _image_axes(train.samples)
    augmenter = _Augment(axes, choices, gen, images=bool(images))
    to = {name: _float32(train.samples[name]) for name in inputs}  # float16 inputs: computed in float32
    held = {name: _float32(held_out.samples[name]) for name in inputs}
    n = len(train)

    step_msg("distillation: planning the memory of a training step")
    static = _static_batch(student)
    plan = plan_training(net, {k: v[:1] for k, v in to.items()}, axes, _free_spatial(student, axes), taps,
                         training_budget(memory_budget), samples_per_step(n, axes, to), static)
    micro = plan.micro
    crop_pixels = plan.size[0] * plan.size[1] if plan.size else None
    batch = max(micro, samples_per_step(n, axes, to, crop_pixels) // micro * micro)
    eval_micro = static or (micro if plan.size is None else 1)
    log.info("distillation: %d samples per pass, %d per step, %s, %s (%.0f MiB a sample, budget %.0f MiB)",
             micro, batch, f"crops of {plan.size[0]}x{plan.size[1]}" if plan.size else "full size",
             f"{plan.segments} checkpointed segments" if plan.segments else "no checkpointing",
             plan.per_sample / 2**20, plan.budget / 2**20)

    def in_chunks(model, feed: dict) -> list[np.ndarray]:
        """The model's outputs on ``feed`` in pieces of ``eval_micro``, concatenated, as arrays."""
        pieces = []
        for i in range(0, len(next(iter(feed.values()))), eval_micro):
            part = {k: v[i:i + eval_micro] for k, v in feed.items()}
            ys = model(part) if model is teach else model({k: _layout(v.to(device)) for k, v in part.items()})
            pieces.append([y.detach().float().cpu().numpy() for y in ys])
        return [np.concatenate(column) for column in zip(*pieces, strict=True)]

    held_teacher = in_chunks(teach, held)
    chosen = _resolve_task(task, teacher, held_teacher)
    task = chosen.name
    loss_name, score_name = measure_names(task)
    scales = _scales(task, held_teacher)
    probabilities = _probabilities(held_teacher)

    def evaluate() -> tuple[float, float, float, float]:
        """The held-out (loss, score, KL, top-1 agreement); the last two NaN but for a classifier."""
        net.eval()
        with torch.no_grad():
            out = in_chunks(net, held)
        f = _measure(chosen, held_teacher, out)
        kl, agree = (f.kl, f.top1_agreement) if task == "classify" else (math.nan, math.nan)
        return f.loss, f.score, kl, agree

    loss0, score0, kl0, agree0 = evaluate()
    curve = [{"step": 0, "train_loss": None, "held_out_loss": loss0, "score": score0}]
    shown = SCORE[task]  # the score's key: shown as fidelity shows it (a share in percent, IoU as a number)
    step_msg(f"distilling ({task}): held-out {loss_name} {loss0:.4g}, {score_name} "
             f"{format_metric(shown, score0)} before")
    params = list(weights.values())
    starts = [p.detach().clone() for p in params] if pull else []
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    best = (loss0, 0, score0, kl0, agree0)
    best_state = None
    since_best, done, stopped_early = 0, 0, False
    order = torch.randperm(n, generator=gen)
    cursor, running, matched = 0, [], None
    for step in range(1, steps + 1):
        net.train()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(batch // micro):
            if cursor + micro > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor:cursor + micro]
            cursor += micro
            feed = {}
            for k, v in to.items():
                x = v[idx]
                if plan.size is not None:
                    x = _random_crops(x, axes, plan.size, gen)
                feed[k] = augmenter(x)
            target, dense_features = teach(feed, taps=True) if taps else (teach(feed), [])
            ys = _forward(net, {k: _layout(v.to(device)) for k, v in feed.items()}, taps, plan.segments)
            outs, features = ys[:len(ys) - len(taps)], ys[len(ys) - len(taps):]
            loss = _output_loss(task, [t.to(device) for t in target], outs, scales, probabilities)
            if taps:
                if matched is None:  # layers that kept all their outputs
                    matched = [d.shape == p.shape for d, p in zip(dense_features, features, strict=True)]
                loss = loss + FEATURES * _feature_loss(matched, dense_features, features, device)
            loss = loss * (micro / batch)
            loss.backward()
            total += float(loss.detach())
            del ys, outs, features, loss, target, dense_features
        for name, mask in masks.items():
            if weights[name].grad is not None:
                weights[name].grad.mul_(mask)
        rate = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        with torch.no_grad():
            if pull:  # weight decay toward the starting point, decoupled from Adam's scaling
                for p, p0 in zip(params, starts, strict=True):
                    p.sub_((p - p0) * min(1.0, rate * pull))
            for name, mask in masks.items():
                weights[name].mul_(mask)
        running.append(total)
        done = step
        if step % EVAL_EVERY and step != steps:
            continue
        loss, score, kl, agree = evaluate()
        curve.append({"step": step, "train_loss": float(np.mean(running)), "held_out_loss": loss, "score": score})
        running = []
        if loss < best[0]:
            best, since_best = (loss, step, score, kl, agree), 0
            best_state = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in weights.items()}
        else:
            since_best += 1
        step_msg(f"distilling: step {step}/{steps}, held-out {loss_name} {loss:.4g} (best {best[0]:.4g} at step "
                 f"{best[1]}), {score_name} {format_metric(shown, score)}")
        if since_best >= PATIENCE and step < steps:
            stopped_early = True
            break
    out = onnx.ModelProto()
    out.CopyFrom(student)
    if best_state is not None:
        _write_back(out, {name: t.numpy() for name, t in best_state.items()})
    report = Distillation(
        max_steps=steps, steps=done, best_step=best[1], seconds=time.perf_counter() - start, device=str(device),
        lr=lr, temperature=TEMPERATURE, batch=batch, train_samples=n, held_out=len(held_out),
        augment=augmenter.description, tensors=len(weights), values=int(sum(p.numel() for p in params)),
        masked=len(masks), kl_before=kl0, kl_after=best[3], agreement_before=agree0, agreement_after=best[4],
        stopped_early=stopped_early, curve=curve, task=task, loss_name=loss_name, score_name=score_name,
        loss_before=loss0, loss_after=best[0], score_before=score0, score_after=best[2], pull=pull,
        micro_batch=micro, train_size=list(plan.size) if plan.size else None, checkpointed=bool(plan.segments),
        memory_budget=plan.budget)
    log.info("distilled %d steps in %.1f s on %s (%s): held-out %s %.4g -> %.4g, %s %s -> %s", done, report.seconds,
             device, task, loss_name, loss0, best[0], score_name, format_metric(shown, score0),
             format_metric(shown, best[2]))
    return out, report


def _write_back(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Replace initializers by name, each in its own dtype and shape."""
    for init in model.graph.initializer:
        if init.name in values:
            old = numpy_helper.to_array(init)
            new = values[init.name].astype(old.dtype).reshape(old.shape)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
