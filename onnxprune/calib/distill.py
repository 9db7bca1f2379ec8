"""Label-free recovery (``--distill``): fine-tune the pruned model towards the dense one.

The dense model is the teacher. Both run in PyTorch through ``torchgraph.TorchGraph`` (our own
interpreter of the ONNX graph; see there why not onnx2torch). The student's float initializers
that are learnable weights (Conv/Gemm/MatMul weights and biases, normalisation scales and
shifts, layer scales, embeddings: every float initializer of more than one value that is not a
shape, a BatchNorm running statistic, a Resize scale, a Clip bound, a Pad value or a Pow
exponent) are trained with Adam to match the teacher's temperature-softened first output
(KL divergence, T = ``TEMPERATURE``) on augmented calibration samples: random resized crops and
horizontal flips for image data, flips only for other 4-D arrays that look like images, the
samples as they are otherwise. The teacher sees exactly the student's augmented batch. Beside
the KL, the outputs of every Conv/Gemm/MatMul layer that kept its shape (all of them after
weight sparsity; after channel pruning, those whose output channels all stayed) are matched to
the dense layer's (squared error relative to the dense tensor's mean square, weight
``FEATURES``); the dense model's are read from onnxruntime with those tensors added as outputs.

Masks stay fixed after weight sparsity (``keep_zeros``): every Conv/ConvTranspose/Gemm/MatMul
weight's zeros get zero gradient and are re-zeroed after each step, so N:M patterns survive
exactly. The held-out part of the calibration set (the one fidelity is measured on) decides
early stopping: it is evaluated every ``EVAL_EVERY`` steps (KL at T=1 and top-1 agreement, as
``fidelity.py`` measures them), the best weights are kept, and training stops after
``PATIENCE`` evaluations without improvement. The trained tensors are written back into the
ONNX initializers by name, in their own dtype; the caller verifies the result as usual.

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
from ..progress import Progress
from .data import CalibrationSet

log = logging.getLogger(__name__)

# Defaults, measured on torchvision MobileNetV2 with ImageNet weights (README, "Recovery without labels").
DEFAULT_STEPS = 300  # optimiser steps of BATCH samples
DEFAULT_LR = 1e-4  # Adam, cosine decay to 0 over the steps
TEMPERATURE = 2.0
BATCH = 16
EVAL_EVERY = 25  # steps between held-out evaluations
PATIENCE = 4  # evaluations without a better held-out KL before stopping
CROP_SCALE = (0.25, 1.0)  # random resized crop: share of the image's area
CROP_RATIO = (3 / 4, 4 / 3)
MIXUP = 0.0  # images: blend each sample with up to this share of another (measured: no gain, so off)
FEATURES = 1.0  # weight of matching the outputs of every layer (relative squared error) beside the KL

INSTALL = "pip install 'onnxprune[recover]' (or pip install torch)"

@dataclass
class Distillation:
    """What ``--distill`` did: steps, time, and held-out KL (T=1) and top-1 agreement before and
    after (the kept weights are those of ``best_step``)."""

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
    curve: list[dict] = field(default_factory=list)  # {"step", "train_kl", "held_out_kl", "agreement"}


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


class _Augment:
    """Random resized crops (``crops``) and horizontal flips of a batch, per sample."""

    def __init__(self, axes: tuple[int, int] | None, crops: bool, generator) -> None:
        self.axes, self.crops, self.gen = axes, crops and axes is not None, generator

    @property
    def description(self) -> str:
        if self.axes is None:
            return "none (samples as they are)"
        return "random resized crops and horizontal flips" if self.crops else "horizontal flips"

    def _uniform(self, lo: float, hi: float) -> float:
        import torch

        return lo + (hi - lo) * float(torch.rand((), generator=self.gen))

    def __call__(self, x):
        import torch
        import torch.nn.functional as F  # noqa: N812

        if self.axes is None:
            return x
        h_axis, w_axis = self.axes
        channels_last = h_axis == 1
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        out = []
        height, width = x.shape[2], x.shape[3]
        for sample in x:
            if self.crops:
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
                sample = F.interpolate(sample[None, :, top:top + h, left:left + w], size=(height, width),
                                       mode="bilinear", align_corners=False)[0]
            if float(torch.rand((), generator=self.gen)) < 0.5:
                sample = sample.flip(-1)
            out.append(sample)
        y = torch.stack(out)
        if self.crops and MIXUP and len(y) > 1:  # each sample blended with another: new inputs, same teacher
            lam = torch.rand((len(y), 1, 1, 1), generator=self.gen) * MIXUP
            y = (1 - lam) * y + lam * y[torch.randperm(len(y), generator=self.gen)]
        return y.permute(0, 2, 3, 1).contiguous() if channels_last else y


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
    """The dense model's first output as [rows, classes] on ``device``: onnxruntime on the CPU (several
    times faster there than torch), the PyTorch interpreter on a GPU."""

    def __init__(self, model: onnx.ModelProto, device, dtypes: dict, taps: tuple[str, ...] = ()) -> None:
        self.device, self.dtypes, self.taps = device, dtypes, taps
        if device.type == "cpu":
            from ..graph.sessions import make_session

            self.output = model.graph.output[0].name
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
        """The logits, and with ``taps`` the tapped tensors too."""
        import torch

        if self.device.type == "cpu":
            names = [self.output, *self.taps] if taps else [self.output]
            ys = self.sess.run(names, {k: np.ascontiguousarray(v.numpy(), dtype=self.dtypes[k])
                                       for k, v in feed.items()})
            ys = [torch.from_numpy(y) for y in ys]
        else:
            with torch.no_grad():
                ys = self.net({k: _layout(v.to(self.device)) for k, v in feed.items()}, self.taps if taps else ())
        return (_logits(ys), ys[len(ys) - len(self.taps):]) if taps else _logits(ys)


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


def distill_model(teacher: onnx.ModelProto, student: onnx.ModelProto, train: CalibrationSet, held_out: CalibrationSet,
            *, steps: int, lr: float | None = None, keep_zeros: bool = False, images: bool | None = None,
            progress: Progress | None = None, seed: int = 0) -> tuple[onnx.ModelProto, Distillation]:
    """Fine-tune ``student`` (the pruned model) to the outputs of ``teacher`` (the dense model).

    Trains on ``train`` (augmented), early-stops on ``held_out``; ``keep_zeros`` keeps the zeros of
    every layer weight (after weight sparsity). ``images``: whether ``train`` holds images (random
    resized crops and flips; None: ``train.images``); other 4-D image-like arrays get flips only.
    Returns a copy of ``student`` with the trained initializers written back by name, and what happened.
    """
    import torch

    from .torchgraph import TorchGraph

    start = time.perf_counter()
    step_msg = progress or (lambda msg: log.debug("%s", msg))
    lr = resolve_lr(lr)
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
    augment = _Augment(_image_axes(train.samples), bool(images), gen)
    to = {name: _float32(train.samples[name]) for name in inputs}  # float16 inputs: computed in float32
    held = {name: _float32(held_out.samples[name]) for name in inputs}
    n = len(train)
    micro = _static_batch(student) or BATCH
    batch = max(micro, min(BATCH, n) // micro * micro)

    def run(model, feed):
        return _logits(model({k: _layout(v.to(device)) for k, v in feed.items()}))

    held_teacher = torch.cat([teach({k: v[i:i + micro] for k, v in held.items()})
                              for i in range(0, len(held_out), micro)])

    def evaluate() -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            out = torch.cat([run(net, {k: v[i:i + micro] for k, v in held.items()})
                             for i in range(0, len(held_out), micro)])
        kl = float(_kl(held_teacher.double(), out.double()))
        return kl, float((held_teacher.argmax(-1) == out.argmax(-1)).double().mean())

    kl0, agree0 = evaluate()
    curve = [{"step": 0, "train_kl": None, "held_out_kl": kl0, "agreement": agree0}]
    step_msg(f"distilling: held-out KL {kl0:.4g}, top-1 agreement {agree0:.1%} before")
    params = list(weights.values())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    best = (kl0, 0, agree0)
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
            feed = {k: augment(v[idx]) for k, v in to.items()}
            if taps:
                target, dense_features = teach(feed, taps=True)
                ys = net({k: _layout(v.to(device)) for k, v in feed.items()}, taps)
                features = ys[len(ys) - len(taps):]
                if matched is None:  # layers that kept all their outputs
                    matched = [d.shape == p.shape for d, p in zip(dense_features, features, strict=True)]
                loss = _kl(target, _logits(ys), TEMPERATURE)
                loss = loss + FEATURES * _feature_loss(matched, dense_features, features, device)
                loss = loss * (micro / batch)
            else:
                target = teach(feed)
                loss = _kl(target, run(net, feed), TEMPERATURE) * (micro / batch)
            loss.backward()
            total += float(loss.detach())
        for name, mask in masks.items():
            if weights[name].grad is not None:
                weights[name].grad.mul_(mask)
        opt.step()
        sched.step()
        with torch.no_grad():
            for name, mask in masks.items():
                weights[name].mul_(mask)
        running.append(total / TEMPERATURE ** 2)
        done = step
        if step % EVAL_EVERY and step != steps:
            continue
        kl, agree = evaluate()
        curve.append({"step": step, "train_kl": float(np.mean(running)), "held_out_kl": kl, "agreement": agree})
        running = []
        if kl < best[0]:
            best, since_best = (kl, step, agree), 0
            best_state = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in weights.items()}
        else:
            since_best += 1
        step_msg(f"distilling: step {step}/{steps}, held-out KL {kl:.4g} (best {best[0]:.4g} at step {best[1]}), "
                 f"top-1 agreement {agree:.1%}")
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
        augment=augment.description, tensors=len(weights), values=int(sum(p.numel() for p in params)),
        masked=len(masks), kl_before=kl0, kl_after=best[0], agreement_before=agree0, agreement_after=best[2],
        stopped_early=stopped_early, curve=curve)
    log.info("distilled %d steps in %.1f s on %s: held-out KL %.4g -> %.4g, top-1 agreement %.1f%% -> %.1f%%",
             done, report.seconds, device, kl0, best[0], 100 * agree0, 100 * best[2])
    return out, report


def _write_back(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Replace initializers by name, each in its own dtype and shape."""
    for init in model.graph.initializer:
        if init.name in values:
            old = numpy_helper.to_array(init)
            new = values[init.name].astype(old.dtype).reshape(old.shape)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
