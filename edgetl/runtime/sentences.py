"""What a text bundle's `Model` does differently: sentences in, through the bundle's own tokenizer.

    from edgetl.runtime import Model
    model = Model.load("bundles/kiosk")            # a text bundle
    print(model.predict("turn on the lights")[0].label)
    model.adapt(["lights on in the hall please"], ["lights_on"])

The bundle's `tokenizer.json` runs with the `tokenizers` package at the bundle's fixed length; its
ids go to the engine as they are (the graph makes the attention mask and mean-pools), and
everything after the embedding (head store, guard, rollback) is the image model's. numpy,
`tokenizers` and the standard library only.
"""

from __future__ import annotations

import importlib.util
from functools import cached_property
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.texts import as_texts, labelled_texts
from edgetl.runtime.tokens import TextSpec, Tokenizer


def check_ids(spec: TextSpec, engine, name: str) -> None:
    """The engine's model takes the spec's token ids: (batch, max_len) of its integer type; and this
    device has the tokenizers package the bundle's tokenizer runs with (named now, not at the first predict)."""
    if importlib.util.find_spec("tokenizers") is None:
        raise ConfigError("the tokenizers package is not installed (text bundles need it)",
                          "pip install 'edgetl[runtime-text]'")
    got = engine.input
    if got.dtype != spec.dtype or tuple(got.shape[1:]) != (spec.max_len,):
        raise ConfigError(f"the bundle's spec says {spec.dtype} token ids of length {spec.max_len}, and the {name} "
                          f"engine's model takes {got.dtype} {list(got.shape)}",
                          "the bundle and its model disagree: compile it again")


class Sentences:
    """A text bundle's input side: its tokenizer at the spec's length, and how labelled texts are read."""

    def __init__(self, folder: Path, spec: TextSpec):
        self.folder, self.spec = Path(folder), spec

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.folder / self.spec.tokenizer, self.spec)

    @property
    def max_len(self) -> int:
        return self.spec.max_len

    def ids(self, texts) -> np.ndarray:
        """(N, max_len) ids of `texts` (a sentence or a list), as the engine takes them."""
        return self.tokenizer.ids(as_texts(texts))

    @staticmethod
    def inputs(items) -> list[str]:
        return as_texts(items)

    @staticmethod
    def labelled(path) -> tuple[list[str], list[str]]:
        return labelled_texts(path)
