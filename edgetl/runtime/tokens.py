"""The text side of the preprocessing spec: how a sentence becomes the model's token ids, kept as data.

A text backbone takes one tensor, the token ids (N, max_len), padded with `pad_id`; its graph
makes the attention mask from them (`ids != pad_id`) and mean-pools over it, so every engine,
the int8 output and the parity check keep the one-input, one-output contract of images. The
tokenizer travels as the Hugging Face `tokenizer.json` it was trained with, and the device runs
it with the `tokenizers` package (Rust, aarch64 wheels), never torch or transformers. Written
once at fine-tune time (`preprocess.json`), carried into every artifact and the manifest.
numpy, `tokenizers` and the standard library only: this module is imported on the device.
"""

from __future__ import annotations

from dataclasses import field, replace
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.features import Segment
from edgetl.runtime.records import Record, RecordError, record

TOKENIZER = "tokenizer.json"
ID_DTYPES = ("int64", "int32")
MAX_LEN = 512  # BERT's position table; a longer --max-len has no positions to embed


@record
class TextSpec(Record):
    """Input contract of a text backbone.

    tokenizer: the tokenizer file's name, beside the spec (run dir, export, bundle).
    max_len: tokens per sentence, [CLS] and [SEP] included: longer sentences are truncated, shorter
            ones padded. Fixed, so every engine sees one static shape.
    pad_id: the padding token's id; the graph's attention mask is `ids != pad_id`.
    dtype: the ids' type as the model takes them (int64 ONNX, int32 TFLite).
    outputs: the segments of the backbone output (the embedding alone for text).
    """

    OPTIONAL_KEYS = frozenset({"outputs"})

    kind: str
    tokenizer: str
    max_len: int
    pad_id: int
    dtype: str = "int64"
    outputs: tuple[Segment, ...] = ()
    schema_version: int = field(default=1)

    def __post_init__(self) -> None:
        why = self.problem()
        if why:
            raise RecordError(why)

    def problem(self) -> str | None:
        if self.kind != "text":
            return f"kind must be 'text', not {self.kind!r}"
        if not (isinstance(self.max_len, int) and 4 <= self.max_len <= MAX_LEN):
            return f"max_len must be a whole number of tokens (4..{MAX_LEN}), not {self.max_len!r}"
        if self.dtype not in ID_DTYPES:
            return f"dtype must be one of {ID_DTYPES}, not {self.dtype!r}"
        if not isinstance(self.tokenizer, str) or "/" in self.tokenizer or not self.tokenizer.endswith(".json"):
            return f"tokenizer must be a .json file name beside the spec, not {self.tokenizer!r}"
        return None

    pixels = False  # what image code asks of a spec: this one takes token ids, not frames

    def with_outputs(self, outputs: tuple[Segment, ...]) -> TextSpec:
        return replace(self, outputs=tuple(outputs))

    def with_max_len(self, max_len: int) -> TextSpec:
        return replace(self, max_len=int(max_len))

    def with_dtype(self, dtype: str) -> TextSpec:
        return replace(self, dtype=dtype)

    def with_input(self, dtype: str, scale, zero_point) -> TextSpec:
        """What quantize adds to an image spec; token ids are never quantized, so nothing."""
        return self


class Tokenizer:
    """A `tokenizer.json` at a spec's fixed length: sentences -> (N, max_len) ids, padded and truncated."""

    def __init__(self, path: str | Path, spec: TextSpec):
        try:
            from tokenizers import Tokenizer as Fast
        except ImportError:
            raise ConfigError("the tokenizers package is not installed (text bundles need it)",
                              "pip install 'edgetl[runtime-text]'") from None
        try:
            fast = Fast.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception for a damaged file
            raise ConfigError(f"{path} is not a tokenizer ({str(exc).splitlines()[0][:120]})",
                              "the file is damaged: compile the bundle (or fine-tune the run) again") from None
        fast.no_padding()
        fast.enable_truncation(spec.max_len)
        fast.enable_padding(length=spec.max_len, pad_id=spec.pad_id, pad_token=fast.id_to_token(spec.pad_id) or "")
        self.fast, self.spec, self._dtype = fast, spec, np.dtype(spec.dtype)

    def ids(self, texts: list[str]) -> np.ndarray:
        """(N, max_len) token ids in the spec's dtype."""
        if len(texts) == 1:  # the device's usual case: one sentence, no batch machinery
            return np.asarray([self.fast.encode(texts[0]).ids], self._dtype)
        return np.asarray([e.ids for e in self.fast.encode_batch(texts)], self._dtype)

    def lengths(self, texts: list[str]) -> np.ndarray:
        """Tokens per sentence before padding and truncation (what chooses a --max-len)."""
        self.fast.no_truncation()
        self.fast.no_padding()
        try:
            return np.asarray([len(e.ids) for e in self.fast.encode_batch(texts)])
        finally:
            self.fast.enable_truncation(self.spec.max_len)
            self.fast.enable_padding(length=self.spec.max_len, pad_id=self.spec.pad_id,
                                     pad_token=self.fast.id_to_token(self.spec.pad_id) or "")


def read_spec(raw: dict, where: str):
    """A preprocess.json's dict as the spec it is: a `TextSpec` (kind "text") or an image `PreprocessSpec`."""
    from edgetl.runtime.preprocess import PreprocessSpec

    if isinstance(raw, dict) and raw.get("kind") == "text":
        return TextSpec.from_dict(raw, where)
    return PreprocessSpec.from_dict(raw, where)


def is_text(spec) -> bool:
    return isinstance(spec, TextSpec)
