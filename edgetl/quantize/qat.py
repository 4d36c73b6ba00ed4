"""Quantization-aware fine-tuning: a few epochs of the run's own training with int8 simulated.

When calibration, the PTQ refinements and keeping layers float all miss the budget, the
weights themselves have to learn to live with int8. This is PyTorch's PT2E QAT flow
(`prepare_qat_pt2e` from torchao) with litert-torch's quantizer, configured as the TFLite
PTQ path is (`edgetl.quantize.tflite.quantizer`): int8 weights per channel, int8 activations,
ReLU6 outputs quantized after the clamp, pools with their own range. So one set of weights and
scales is learnt and both artifacts are made from the same converted q/dq graph:

- ONNX: that graph exported by torch.onnx, whose q/dq ops become QuantizeLinear/DequantizeLinear
  (the QDQ form onnxruntime fuses and TensorRT reads as explicit quantization), with the weights
  folded to int8 initializers as onnxruntime's own quantizer stores them;
- TFLite: that graph converted by litert-torch with the quantizer's config, as PTQ is.

The recipe is the run's (its augmentation, batch size, label smoothing, class-balanced order),
at a tenth of its learning rate, cosine-annealed. The run's float head trains beside the int8
backbone and goes with it (RUN/quantize/FORMAT/head.npz, which the bundle packs); the device
adapts its own head from there as from any other. BatchNorm is folded
into the convs first (frozen statistics, usual for a short QAT fine-tune, and litert-torch's own
conv+BN QAT annotation fails on this torch, its issue #355). The activation ranges start from the
calibration images and follow the training batches (moving average) until the last epoch, which
trains with them frozen. Each epoch is scored on val with int8 simulated; the best by val loss is
kept, epoch 0 (calibration only) included.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgetl.console import QUIET, Console, silenced
from edgetl.data.imagefolder import load_images
from edgetl.errors import ConfigError, converting
from edgetl.runtime.features import EMBEDDING, Layout
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.features import nchw, to_input

EPOCHS = 8
LR_SCALE = 0.1  # of the run's peak learning rate: QAT starts from a converged model
EVAL_BATCH = 64


@dataclass(frozen=True)
class QatConfig:
    """`epochs` of QAT (default 8); `lr`: peak learning rate (default: the run's x 0.1)."""

    epochs: int = EPOCHS
    lr: float | None = None

    def check(self) -> QatConfig:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= 100:
            raise ConfigError(f"--qat-epochs must be a whole number from 1 to 100, not {self.epochs!r}",
                              f"e.g. {EPOCHS} (default)")
        if self.lr is not None and not (isinstance(self.lr, int | float) and 0 < self.lr < math.inf):
            raise ConfigError(f"--qat-lr must be a finite number > 0, not {self.lr!r}",
                              "e.g. 1e-4 (default: the run's learning rate x 0.1)")
        return self


DEFAULT_QAT = QatConfig()


@dataclass
class Qat:
    """The converted q/dq graph (batch 1, the format's layout) and what training it measured.
    Top-1 figures in percent (0-100); losses are the label-smoothed cross-entropy as trained."""

    graph: torch.fx.GraphModule
    quantizer: object
    head: dict[str, np.ndarray]  # W, b: the float head trained beside it (the int8 result ships it)
    epochs: int
    best_epoch: int
    lr: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "lr": self.lr, "history": self.history,
                "train_seconds": self.seconds}


def fake_quant_modules(graph: torch.nn.Module):
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return [m for m in graph.modules() if isinstance(m, FakeQuantizeBase)]


def _prepare(net: torch.nn.Module, sample: torch.Tensor, quantizer) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    with silenced(), converting("QAT preparation (torch.export + PT2E)",
                                "this backbone does not export for quantization-aware training: use --method auto"):
        graph = torch.export.export(net, (sample,), strict=True).module()
        _fuse_conv_bn_(graph)  # BatchNorm into the convs: frozen statistics (see the module's docstring)
        return prepare_qat_pt2e(graph, quantizer)


def _train_mode(graph: torch.fx.GraphModule, on: bool) -> None:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    (move_exported_model_to_train if on else move_exported_model_to_eval)(graph)


def _observe(graph: torch.fx.GraphModule, on: bool) -> None:
    for m in fake_quant_modules(graph):
        m.enable_observer(on)


class _Inputs:
    """uint8 NCHW frames -> what the QAT graph takes: normalised float, NCHW (ONNX) or NHWC (TFLite)."""

    def __init__(self, spec: PreprocessSpec, channels_last: bool):
        self.spec, self.channels_last = spec, channels_last

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = to_input(frames, self.spec)
        return x.permute(0, 2, 3, 1).contiguous() if self.channels_last else x


def _batches(n: int, batch: int):
    for start in range(0, n, batch):
        yield slice(start, min(start + batch, n))


def train(run, module: torch.nn.Module, layout: Layout, calib_frames: np.ndarray, *, channels_last: bool,
          config: QatConfig = DEFAULT_QAT, console: Console = QUIET) -> Qat:
    """QAT of `module` (the run's backbone as the artifact is made from it: NCHW float in, its
    outputs in `layout`) and the run's head beside it; `calib_frames` (uint8 NHWC) start the ranges."""
    from edgetl.export.tflite import channels_last as nhwc_io
    from edgetl.quantize.tflite import quantizer as make_quantizer
    from edgetl.train.finetune import augmenter, balanced_order
    from edgetl.train.run import split_samples

    config = config.check()
    t0 = time.perf_counter()
    recipe = run.record.config or {}
    batch = int(recipe.get("batch_size", 32))
    lr = config.lr if config.lr is not None else float(recipe.get("lr", 1e-3)) * LR_SCALE
    smoothing = float(recipe.get("label_smoothing", 0.1))
    seed = int(recipe.get("seed", 0))
    spec = run.spec
    prepare_input = _Inputs(spec, channels_last)
    module = copy.deepcopy(module)  # training must not change the run's own backbone (the export shares its tensors)
    net = nhwc_io(module).eval() if channels_last else module.eval()

    def load(split: str):
        loaded = load_images(split_samples(run, split), spec.size, spec.resize, interpolation=spec.interpolation)
        return nchw(loaded.images), torch.from_numpy(loaded.labels.astype(np.int64))

    with console.task("reading the run's train and val images", 2, "splits") as advance:
        train_x, train_y = load("train")
        advance(1)
        val_x, val_y = load("val")
        advance(1)
    if len(train_y) < 2:
        raise ConfigError(f"{run.path}'s train split has {len(train_y)} readable image(s): QAT needs more",
                          "use --method auto, or fine-tune on more images")
    batch = max(2, min(batch, len(train_y)))
    quantizer = make_quantizer("minmax", (), qat=True)
    sample = prepare_input(nchw(calib_frames[:1]))
    graph = _prepare(net, sample.expand(batch, *sample.shape[1:]).contiguous(), quantizer)
    emb = layout.columns((EMBEDDING,))  # a slice: the embedding leads the outputs
    head = copy.deepcopy(run.head).train()  # float on the device; it learns beside the int8 backbone

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = graph(x)
        out = out[0] if isinstance(out, tuple | list) else out
        return head(out[:, emb])

    def padded(x: torch.Tensor) -> tuple[torch.Tensor, int]:  # the graph was exported for `batch` images
        n = len(x)
        return (torch.cat([x, x[:1].expand(batch - n, *x.shape[1:])]) if n < batch else x), n

    @torch.no_grad()
    def evaluate() -> dict:
        _train_mode(graph, False)
        losses, hits = [], 0
        for s in _batches(len(val_y), batch):
            x, n = padded(prepare_input(val_x[s]))
            out = logits(x)[:n]
            losses.append(float(F.cross_entropy(out, val_y[s], label_smoothing=smoothing, reduction="sum")))
            hits += int((out.argmax(1) == val_y[s]).sum())
        return {"val_loss": round(sum(losses) / max(len(val_y), 1), 4),
                "val_top1": round(100.0 * hits / max(len(val_y), 1), 2)}

    with torch.no_grad(), silenced():  # the ranges start where calibration puts them
        _train_mode(graph, False)
        for s in _batches(len(calib_frames), batch):
            x, _ = padded(prepare_input(nchw(calib_frames[s])))
            graph(x)
    history = [{"epoch": 0, **evaluate()}]
    console.log(f"QAT epoch 0 (calibrated ranges): val top-1 {history[0]['val_top1']:.2f}% (int8 simulated), "
                f"val loss {history[0]['val_loss']:.3f}")
    best_state, best_head, best_epoch = copy.deepcopy(graph.state_dict()), copy.deepcopy(head.state_dict()), 0
    params = [p for p in graph.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(recipe.get("weight_decay", 0.05)))
    steps = config.epochs * (len(train_y) // batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    rng = np.random.default_rng(seed + 2)
    torch.manual_seed(seed + 2)
    augment = augmenter(spec.size[0]) if recipe.get("augment", True) else None
    with console.task(f"quantization-aware fine-tuning ({config.epochs} epochs, lr {lr:.2g})", steps, "steps") \
            as advance:
        for epoch in range(1, config.epochs + 1):
            _observe(graph, epoch < config.epochs or config.epochs == 1)  # the last epoch trains on fixed ranges
            _train_mode(graph, True)
            order = torch.from_numpy(balanced_order(train_y.numpy(), rng))
            losses = []
            for i in range(len(train_y) // batch):
                idx = order[i * batch : (i + 1) * batch]
                frames = train_x[idx]
                if augment is not None:
                    frames = torch.stack([augment(f) for f in frames])
                loss = F.cross_entropy(logits(prepare_input(frames)), train_y[idx], label_smoothing=smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                losses.append(loss.item())
                advance(1)
            scored = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **evaluate()}
            history.append(scored)
            console.log(f"QAT epoch {epoch}/{config.epochs}: loss {scored['loss']:.3f}  val top-1 "
                        f"{scored['val_top1']:.2f}% (int8 simulated)  val loss {scored['val_loss']:.3f}")
            if scored["val_loss"] < min(h["val_loss"] for h in history[:-1]):
                best_state, best_head = copy.deepcopy(graph.state_dict()), copy.deepcopy(head.state_dict())
                best_epoch = epoch
    # the artifact is made at batch 1: the same graph prepared again, given the kept weights and ranges
    one = _prepare(net, sample, quantizer)
    with torch.no_grad(), silenced():
        one(sample)  # creates every observer's buffers before they are overwritten
    one.load_state_dict(best_state)
    _observe(one, False)
    _train_mode(one, False)
    _freeze_qparams(one)
    with silenced(), converting("QAT conversion (PT2E convert)", "use --method auto"):
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        converted = allow_exported_model_train_eval(convert_pt2e(one, fold_quantize=False))  # exporters call .eval()
    head.load_state_dict(best_head)
    weights = {"W": head.weight.detach().numpy().astype(np.float32), "b": head.bias.detach().numpy().astype(np.float32)}
    return Qat(converted, quantizer, weights, config.epochs, best_epoch, lr, history,
               round(time.perf_counter() - t0, 1))


@torch.no_grad()
def parity(qat: Qat, artifact: Path, frames: np.ndarray, spec: PreprocessSpec, *, channels_last: bool,
           head: tuple[np.ndarray, np.ndarray], columns) -> dict:
    """The written artifact against the torch q/dq graph it was converted from, on `frames` (uint8 NHWC):
    the largest output difference relative to the graph's output range, and top-1 agreement through the
    run's head. Small rounding differences are expected (the engines' integer kernels round once where
    the graph rounds at every q/dq); a low agreement would mean the converter changed the model."""
    from edgetl.quantize.scoring import load_engine

    to_graph = _Inputs(spec, channels_last)
    ref = []
    for i in range(len(frames)):
        out = qat.graph(to_graph(nchw(frames[i : i + 1])))
        ref.append((out[0] if isinstance(out, tuple | list) else out).numpy())
    ref = np.concatenate(ref)
    with silenced():
        got = load_engine(artifact).run(spec.model_input(frames))
    W, b = head
    agree = float(((ref[:, columns] @ W.T + b).argmax(1) == (got[:, columns] @ W.T + b).argmax(1)).mean())
    spread = max(float(ref.max() - ref.min()), 1e-12)
    return {"images": int(len(frames)), "max_rel_diff": round(float(np.abs(got - ref).max()) / spread, 4),
            "top1_agreement": round(agree, 4)}


def _freeze_qparams(graph: torch.fx.GraphModule) -> None:
    """Convert with the scales and zero-points training used, not ones recomputed from the observers'
    running min/max: the fused fake-quant op keeps its own (for weights they differ by a fraction of a
    percent, which is enough to round some weights the other way than QAT taught them)."""
    for m in fake_quant_modules(graph):
        if getattr(m, "scale", None) is None or getattr(m, "zero_point", None) is None:
            continue
        zero_point = m.zero_point.detach().clone()
        if getattr(m, "qscheme", None) in (torch.per_channel_symmetric, torch.per_tensor_symmetric):
            zero_point.zero_()  # symmetric is zero-centred (the fused op leaves junk in an all-zero channel)
        m.calculate_qparams = lambda m=m, zp=zero_point: (m.scale.detach().clone(), zp)


def write_tflite(qat: Qat, sample_nhwc: np.ndarray, out: Path) -> Path:
    """The QAT graph as a full-int8 .tflite (float in: the caller gives it the frames, as for PTQ)."""
    from edgetl.export.tflite import to_tflite

    with silenced():
        from litert_torch.quantize.quant_config import QuantConfig

    to_tflite(qat.graph, torch.from_numpy(sample_nhwc[:1]), out, quant_config=QuantConfig(pt2e_quantizer=qat.quantizer))
    return out


def write_onnx(qat: Qat, spec: PreprocessSpec, out: Path) -> Path:
    """The QAT graph as ONNX QDQ taking what `spec` says (uint8 frames or float NCHW), weights in int8."""
    import onnx

    from edgetl.export import write_artifact

    write_artifact(qat.graph, spec, out, "onnx", output_name="embedding")
    model = onnx.load(str(out))
    fold_weight_quantize(model)
    drop_redundant_clamps(model)
    onnx.save(model, str(out))
    return out


def fold_weight_quantize(model) -> int:
    """QuantizeLinear(->Clip) of a constant weight, computed once: the DequantizeLinear then reads an int8
    initializer, as in onnxruntime's QDQ models (torch.onnx writes the float weight and quantizes it at run
    time, which costs time on every frame and hides that the model is int8). Returns how many were folded."""
    from onnx import numpy_helper

    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    folded, dropped = 0, set()
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or not all(i in consts for i in node.input[:3]) or len(node.input) < 3:
            continue
        w, scale, zp = (consts[i] for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = -1
        info = np.iinfo(zp.dtype)
        q = np.rint(w / scale.reshape(shape)) + zp.reshape(shape).astype(np.int64)
        tensor, last = node.output[0], node
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == "Clip" and all(i in consts for i in users[0].input[1:3]):
            lo, hi = (float(consts[i]) for i in users[0].input[1:3])
            q = np.clip(q, lo, hi)
            last = users[0]
        q = np.clip(q, info.min, info.max).astype(zp.dtype)
        name = f"{node.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(q, name))
        for user in consumers.get(last.output[0], []):
            for k, i in enumerate(user.input):
                if i == last.output[0]:
                    user.input[k] = name
        dropped.update({id(node), id(last)})
        folded += 1
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return folded


def drop_redundant_clamps(model) -> int:
    """A Relu or Clip read by a QuantizeLinear that saturates at (or inside) the same bounds does nothing
    there: the QuantizeLinear reads the layer before it instead, and its other readers (a tap's pool) read
    that quantized tensor dequantized, which is what they read in an int8 model. The layer before is then
    DequantizeLinear -> Conv -> QuantizeLinear, the pattern onnxruntime fuses into one integer kernel (its
    own quantizer removes these activations the same way). Returns how many were bypassed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    dropped, added = set(), []
    for node in graph.node:
        if node.op_type not in ("Relu", "Clip") or node.output[0] in {o.name for o in graph.output}:
            continue
        users = consumers.get(node.output[0], [])
        q = next((u for u in users if u.op_type == "QuantizeLinear" and all(i in consts for i in u.input[1:3])),
                 None)
        if q is None:
            continue
        scale, zp = float(consts[q.input[1]]), consts[q.input[2]]
        info = np.iinfo(zp.dtype)
        low, high = (info.min - int(zp)) * scale, (info.max - int(zp)) * scale
        bounds = [0.0, math.inf] if node.op_type == "Relu" else [
            float(consts[i]) if i in consts else b for i, b in zip(list(node.input[1:3]) + ["", ""],
                                                                    (-math.inf, math.inf), strict=False)]
        tol = scale * 1e-3
        if low < bounds[0] - tol or high > bounds[1] + tol:
            continue
        others = [u for u in users if u is not q]
        if others:
            dq = next((u for u in consumers.get(q.output[0], []) if u.op_type == "DequantizeLinear"
                       and list(u.input[1:3]) == list(q.input[1:3])), None)
            if dq is None:
                dq = helper.make_node("DequantizeLinear", [q.output[0], *q.input[1:3]], [f"{q.output[0]}_dq"],
                                      name=f"{q.name}_dq")
                added.append(dq)
            for u in others:
                for k, i in enumerate(u.input):
                    if i == node.output[0]:
                        u.input[k] = dq.output[0]
        q.input[0] = node.input[0]
        dropped.add(id(node))
    kept = [n for n in graph.node if id(n) not in dropped] + added
    del graph.node[:]
    graph.node.extend(_topological(kept, {i.name for i in graph.input} | set(consts)))
    return len(dropped)


def _topological(nodes: list, available: set[str]) -> list:
    """`nodes` in an order where each comes after the nodes that make its inputs (ONNX requires it)."""
    made = set(available)
    out, todo = [], list(nodes)
    while todo:
        ready = [n for n in todo if all(not i or i in made for i in n.input)]
        if not ready:  # inputs made by nothing here (graph constants the caller did not list): keep the rest as is
            return out + todo
        for n in ready:
            out.append(n)
            made.update(n.output)
        todo = [n for n in todo if all(n is not r for r in ready)]
    return out
