"""`Model`: a verified bundle, its engine and its head, as an application on the device uses it.

    from edgetl.runtime import Model
    model = Model.load("bundles/rpi4")
    for p in model.predict(["frame.png"]):
        print(p.label, p.probability)

Loading verifies the bundle first (hashes, schema, the signature of a signed bundle, this
machine's architecture, the engine installed), then opens the engine the
manifest names. Images are preprocessed in numpy by the bundle's own spec; quantized input and
output are converted in one place (the engine's `run`). numpy and the engine only.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError
from edgetl.runtime.adapt import AdaptConfig, adapt_head
from edgetl.runtime.engines import Engine, open_engine
from edgetl.runtime.head import Head, softmax
from edgetl.runtime.heads import HeadStore
from edgetl.runtime.images import as_batch
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.runtime.verify import Bundle, BundleError, open_bundle


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int
    top: tuple[tuple[str, float], ...] = field(default=())  # the k best (label, probability), best first

    def to_dict(self) -> dict:
        return {"label": self.label, "probability": round(self.probability, 6), "index": self.index,
                "top": [[label, round(p, 6)] for label, p in self.top]}


class Model:
    """A bundle's backbone on its engine plus its head."""

    def __init__(self, bundle: Bundle, engine: Engine, head: Head, spec: PreprocessSpec, batch_size: int = 32,
                 heads=None, head_note: str | None = None):
        self.bundle, self.engine, self.head, self.spec = bundle, engine, head, spec
        self.batch_size = batch_size
        self.heads = heads  # the HeadStore beside a bundle dir (None for an unpacked archive)
        self.head_note = head_note  # why the head in force is a fallback (loaded with fallback_head), else None
        self._origin = os.path.realpath(bundle.path)  # what BUNDLE resolved to (a deploy swaps a link)

    @property
    def head_version(self) -> int:
        """The version of the head being scored: the head store's (0: the bundle's own head)."""
        return self.head.version if self.heads is not None else 0

    @classmethod
    def load(cls, path: str | Path, *, key: str | Path | None = None, threads: int | None = None,
             machine: str | None = None, unpack_to: Path | None = None, fallback_head: bool = False) -> Model:
        """Verify the bundle (dir or .tar.gz) and open its engine; `machine="any"` skips the arch check.
        A signed bundle is only run once its signature is checked: with `key`, or the public key
        file named by $EDGETL_BUNDLE_KEY (the device's trusted key). A damaged head in force is
        refused (the error names the rollback); `fallback_head` loads the newest intact one
        instead and says why in `head_note` (what adapt and rollback do)."""
        if not isinstance(path, str | os.PathLike) or (key is not None and not isinstance(key, str | os.PathLike)):
            raise ConfigError(f"Model.load takes a bundle path (str or Path), not {type(path).__name__}"
                              + ("" if key is None or isinstance(key, str | os.PathLike) else
                                 f", and a key path, not {type(key).__name__}"), "Model.load('bundles/rpi4')")
        key = key or os.environ.get("EDGETL_BUNDLE_KEY") or None
        owned = None
        if unpack_to is None and not Path(path).is_dir():
            owned = unpack_to = Path(tempfile.mkdtemp(prefix="edgetl-bundle-"))
        try:
            model = cls._load(path, key, threads, machine, unpack_to, fallback_head)
        except BaseException:
            if owned:
                shutil.rmtree(owned, ignore_errors=True)
            raise
        if owned:  # an archive unpacked for this model alone goes when the model does
            weakref.finalize(model, shutil.rmtree, owned, ignore_errors=True)
        return model

    @classmethod
    def _load(cls, path, key, threads, machine, unpack_to, fallback_head=False) -> Model:
        bundle = open_bundle(path, key=key, machine=machine, unpack_to=unpack_to)
        if bundle.signed and not bundle.signature_checked:
            raise BundleError(f"{path} is signed, and no public key was given to check it",
                              "pass key=PUB.pem (CLI: --key) or set EDGETL_BUNDLE_KEY on the device")
        m = bundle.manifest
        engine = open_engine(m.engine, bundle.model, threads=threads, precision=m.precision, bundle_dir=bundle.path)
        try:
            return cls._with_engine(path, bundle, engine, fallback_head)
        except BaseException:
            engine.close()  # a bundle refused after its engine opened frees it (TensorRT: GPU memory)
            raise

    @classmethod
    def _with_engine(cls, path, bundle: Bundle, engine: Engine, fallback_head: bool) -> Model:
        m, spec = bundle.manifest, bundle.manifest.preprocess
        expected = tuple(m.inputs[0].shape)
        if tuple(engine.input.shape) != expected:
            raise ConfigError(f"the {m.engine} engine sees input {engine.input.shape}, the manifest says "
                              f"{list(expected)}", "the bundle and its model disagree: compile it again")
        _check_input(spec, engine, m.engine)
        base = Head.read(bundle.path / m.head, m.labels)
        if not Path(path).is_dir():
            return cls(bundle, engine, base, spec)
        heads = HeadStore.beside(bundle.path, base)
        if not fallback_head:
            return cls(bundle, engine, heads.current(), spec, heads=heads)
        with heads.lock(exclusive=False):
            state = heads.in_force()
        return cls(bundle, engine, state.head, spec, heads=heads, head_note=state.problem)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.head.labels

    def close(self) -> None:
        """Free the engine's resources (TensorRT's GPU memory); the model cannot predict after."""
        self.engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.spec.size)

    def pixels(self, images) -> np.ndarray:
        """`images` as uint8 NHWC at the model's size (see `edgetl.runtime.images.as_batch`)."""
        return as_batch(images, self.input_size, self.spec.resize, self.spec.interpolation)

    def embed(self, images) -> np.ndarray:
        """Embeddings (N, D) float32 of `images`: paths, PIL images or uint8 HxWx3 arrays."""
        pixels = self.pixels(images)
        if len(pixels) <= self.batch_size:
            return self.engine.run(self.spec.normalize(pixels)).astype(np.float32, copy=False)
        out = [self.engine.run(self.spec.normalize(pixels[i : i + self.batch_size]))
               for i in range(0, len(pixels), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def probabilities(self, images) -> np.ndarray:
        return softmax(self.head.logits(self.embed(images)))

    def predict(self, images, *, top_k: int = 1) -> list[Prediction]:
        """The best label and its probability per image, with the `top_k` best (top_k >= 1)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
            raise ConfigError(f"top_k={top_k!r}: ask for at least the best label", "pass top_k=1 or more")
        probs = self.probabilities(images)
        out = []
        for row in probs:
            order = np.argsort(-row)[: top_k] if top_k > 1 else (int(row.argmax()),)
            out.append(Prediction(self.labels[order[0]], float(row[order[0]]), int(order[0]),
                                  tuple((self.labels[i], float(row[i])) for i in order)))
        return out

    def adapt(self, images, labels, *, config=None, unguarded: bool = False, lock_timeout: float | None = None):
        """Learn the head from `images` and their `labels` (new labels add classes); commit it to the
        head store if the guard allows. Returns an `AdaptResult` saying what happened and why.

        The embeddings are computed first, unlocked (the slow part); then, holding the store's lock
        (waiting up to `lock_timeout` s, default the store's, for another adapt or deploy), the head
        in force is read again and trained from, so the version committed names it as its parent
        and no concurrent commit is lost. A damaged head in force is trained past: from the newest
        intact one, which the result names (`parent`, `recovered`)."""
        config = config or AdaptConfig()
        if labels is None or isinstance(labels, str | bytes):
            raise ConfigError("labels must be a list of class names, one per image", "e.g. ['stop', 'yield']")
        labels = list(labels)
        bad = next((lab for lab in labels if not isinstance(lab, str) or not lab.strip()), None)
        if bad is not None or not labels:
            raise ConfigError(f"labels must be non-empty class names (strings), not {bad!r}",
                              f"use the names the head knows ({', '.join(self.labels[:3])}, ...) or new ones")
        many = isinstance(images, list | tuple) or (isinstance(images, np.ndarray) and images.ndim == 4)
        if many and len(images) != len(labels):  # refused before the slow part
            raise ConfigError(f"{len(images)} images and {len(labels)} labels", "give one label per image")
        embeddings = self.embed(images)
        if self.heads is None:  # an archive: nothing to commit to, but the guard's verdict still comes back
            result = adapt_head(self.head, embeddings, labels, config, unguarded=unguarded)
            if result.committed:
                raise ConfigError("this model has no head store (it was loaded from an archive)",
                                  "unpack the bundle and load its dir to adapt it")
            return result
        with self.heads.lock(exclusive=True, timeout=lock_timeout):
            if os.path.realpath(self.bundle.path) != self._origin:
                raise ConfigError(f"{self.bundle.path} was replaced (a deploy) while these images were embedded",
                                  "adapt again: the new backbone needs its own embeddings")
            state = self.heads.in_force()
            result = adapt_head(state.head, embeddings, labels, config, unguarded=unguarded)
            result.parent, result.recovered = state.version, state.problem
            if result.committed:
                result.version = self.heads.commit(result.head, result.to_dict(), parent=state.version)
                result.head = replace(result.head, version=result.version)
                self.head, self.head_note = result.head, None
        return result


def _check_input(spec: PreprocessSpec, engine: Engine, name: str) -> None:
    """The spec's input type and quantization (what quantize recorded) are the engine's own."""
    got = engine.input
    quantized = got.quantized
    same = (spec.dtype == got.dtype and spec.input_scale is not None
            and math.isclose(spec.input_scale, float(got.scale), rel_tol=1e-6)
            and spec.input_zero_point == int(got.zero_point)) if quantized else spec.dtype == "float32"
    if not same:
        raise ConfigError(f"the bundle's preprocessing spec says input {spec.dtype} (scale {spec.input_scale}, "
                          f"zero point {spec.input_zero_point}), and the {name} engine's model takes {got.dtype} "
                          f"(scale {got.scale}, zero point {got.zero_point})",
                          "the bundle and its model disagree: compile it again")


__all__ = ["Head", "Model", "Prediction"]
