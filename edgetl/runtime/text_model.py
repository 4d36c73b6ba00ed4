"""`TextModel`: a text bundle as an application on the device uses it.

    from edgetl.runtime import Model
    model = Model.load("bundles/kiosk")            # a text bundle loads as a TextModel
    print(model.predict(["turn on the lights"])[0].label)
    model.adapt(["lights on in the hall please"], ["lights_on"])

The bundle's `tokenizer.json` runs with the `tokenizers` package at the bundle's fixed length;
its ids go to the engine as they are (the graph makes the attention mask and mean-pools), and
everything after the embedding (head store, guard, rollback) is the image model's. numpy,
`tokenizers`, the engine and the standard library only.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.model import Model, Prediction
from edgetl.runtime.texts import as_texts, labelled_texts
from edgetl.runtime.tokens import TextSpec, Tokenizer


def check_ids(spec: TextSpec, engine, name: str) -> None:
    """The engine's model takes the spec's token ids: (batch, max_len) of its integer type; and this
    device has the tokenizers package the bundle's tokenizer runs with (named now, not at the first predict)."""
    import importlib.util

    if importlib.util.find_spec("tokenizers") is None:
        raise ConfigError("the tokenizers package is not installed (text bundles need it)",
                          "pip install 'edgetl[runtime-text]'")
    got = engine.input
    if got.dtype != spec.dtype or tuple(got.shape[1:]) != (spec.max_len,):
        raise ConfigError(f"the bundle's spec says {spec.dtype} token ids of length {spec.max_len}, and the {name} "
                          f"engine's model takes {got.dtype} {list(got.shape)}",
                          "the bundle and its model disagree: compile it again")


class TextModel(Model):
    """A text bundle's encoder on its engine, its tokenizer, and its head."""

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.bundle.path / self.spec.tokenizer, self.spec)

    @property
    def input_size(self):
        raise ConfigError("a text model has no image size", f"it takes sentences of up to {self.spec.max_len} tokens")

    @property
    def max_len(self) -> int:
        return self.spec.max_len

    def pixels(self, images):
        raise ConfigError("this is a text bundle: it takes sentences, not images",
                          'model.predict(["turn on the lights"])')

    def _batch(self, texts) -> np.ndarray:
        return self.tokenizer.ids(as_texts(texts))

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def inputs(self, items) -> list[str]:
        return as_texts(items)

    def labelled(self, path) -> tuple[list[str], list[str]]:
        return labelled_texts(path)

    def token_ids(self, texts) -> np.ndarray:
        """(N, max_len) ids of `texts` as the engine takes them."""
        return self._batch(texts)

    def engine_input(self, texts) -> np.ndarray:
        """`texts` tokenized, as the engine's own input tensor (what `engine.invoke` takes)."""
        return self.engine.prepare(self._batch(texts))

    def embed(self, texts) -> np.ndarray:
        """The mean-pooled sentence embeddings (N, dim) float32 of `texts` (a sentence or a list)."""
        return self._features(self._batch(texts))

    def predict(self, texts, *, top_k: int = 1) -> list[Prediction]:
        """The best label and its probability per sentence (one string, or a list), with the `top_k` best."""
        if type(texts) is str and top_k == 1 and texts.strip():
            return [self._one(texts)]
        return super().predict(texts, top_k=top_k)

    def _one(self, text: str) -> Prediction:
        """One sentence, best label only: tokenize, one invoke, the softmax of one row in Python."""
        return self._best_of(self.engine.run(self.tokenizer.ids([text])))

    def stream(self, texts, *, top_k: int = 1):
        """One `Prediction` per sentence of `texts` (any iterable), yielded as each arrives."""
        for text in texts:
            yield self.predict(text, top_k=top_k)[0]
