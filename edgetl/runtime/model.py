"""`Model`: a verified bundle, its engine and its head, as an application on the device uses it.

    from edgetl.runtime import Model
    model = Model.load("bundles/rpi4")
    for p in model.predict(["frame.png"]):
        print(p.label, p.probability)

    for p in model.stream(camera_frames()):      # a camera loop: one prediction per frame, as it comes
        ...

Loading verifies the bundle first (hashes, schema, the signature of a signed bundle, this
machine's architecture, the engine installed), then opens the engine the manifest names. A
uint8 bundle's model takes the frame itself (its graph normalises it): a frame already at the
model's size goes to the engine as it is, and one of another size is resized as training resized
(`edgetl.runtime.images`). A float bundle is normalised in numpy by its own spec. Quantized input
and output are converted in one place (the engine's `run`). numpy and the engine only.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError, EdgetlError
from edgetl.runtime.adapt import AdaptConfig, adapt_head, guard_with
from edgetl.runtime.engines import Engine, open_engine
from edgetl.runtime.features import EMBEDDING, Layout
from edgetl.runtime.head import Head, softmax_
from edgetl.runtime.heads import HeadStore
from edgetl.runtime.images import as_batch
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.runtime.sentences import Sentences, check_ids
from edgetl.runtime.tokens import TextSpec
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
        self._columns: tuple[Head | None, slice | np.ndarray] = (None, slice(None))  # the last head checked
        # a text bundle: sentences in, tokenized by its own tokenizer.json (`edgetl.runtime.sentences`)
        self.text = Sentences(bundle.path, spec) if isinstance(spec, TextSpec) else None

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
        if isinstance(spec, TextSpec):  # token ids in, and the bundle's tokenizer makes them
            check_ids(spec, engine, m.engine)
        else:
            _check_input(spec, engine, m.engine)
        layout = Layout.of(spec.outputs, int(engine.output.shape[-1]))
        if layout.width != int(engine.output.shape[-1]):
            raise ConfigError(f"the {m.engine} engine gives {engine.output.shape[-1]} features, the manifest's "
                              f"outputs {layout.width}", "the bundle and its model disagree: compile it again")
        base = Head.read(bundle.path / m.head, m.labels)
        if base.taps != (EMBEDDING,) or base.width != layout.dims((EMBEDDING,))[0]:
            raise ConfigError(f"the bundle's head takes {base.width} features, its backbone's embedding has "
                              f"{layout.dims((EMBEDDING,))[0]}", "the bundle and its model disagree: compile it again")
        if not Path(path).is_dir():
            return cls(bundle, engine, base, spec)
        heads = HeadStore.beside(bundle.path, base, layout=layout)
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
        if self.text:
            raise ConfigError("a text model has no image size", f"it takes sentences of up to {self.max_len} tokens")
        return tuple(self.spec.size)

    @property
    def max_len(self) -> int | None:
        """A text model's tokens per sentence (None for images)."""
        return self.text.max_len if self.text else None

    @property
    def tokenizer(self):
        """A text model's tokenizer (`edgetl.runtime.tokens.Tokenizer`); None for images."""
        return self.text.tokenizer if self.text else None

    def pixels(self, images) -> np.ndarray:
        """`images` as uint8 NHWC at the model's size (see `edgetl.runtime.images.as_batch`)."""
        if self.text:
            raise ConfigError("this is a text bundle: it takes sentences, not images",
                              'model.predict(["turn on the lights"])')
        return as_batch(images, self.input_size, self.spec.resize, self.spec.interpolation)

    @cached_property
    def layout(self) -> Layout:
        """The segments of the backbone's output: the embedding, then its taps (`edgetl.runtime.features`)."""
        return Layout.of(self.spec.outputs, int(self.engine.output.shape[-1]))

    def logits(self, features: np.ndarray, head: Head | None = None) -> np.ndarray:
        """Logits of `head` (default: the one in force) over the backbone outputs `features` (from `embed`):
        the head reads its own segments; one whose segments this bundle lacks is refused."""
        head = head or self.head
        checked, columns = self._columns
        if head is not checked:  # once per head, not per frame
            if not head.labels:
                raise ConfigError(f"{self.bundle.path.name} has no classes yet: run adapt",
                                  f"python -m edgetl.runtime adapt {self.bundle.path} --data DIR "
                                  "(DIR/<label>/*.png, a few images per class)")
            problem = self.layout.problem(head.taps, head.dims)
            if problem:
                raise ConfigError(f"head {head.version} does not fit this bundle: {problem}",
                                  "adapt again on this bundle, or roll back to a head made for it")
            columns = self.layout.columns(head.taps)
            self._columns = (head, columns)
        return head.logits(features[:, columns])

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        """The backbone's outputs of uint8 NHWC frames at the model's size, `batch_size` frames per run."""
        x, run = self._model_input, self.engine.run
        if len(pixels) <= self.batch_size:
            return run(x(pixels))
        return np.concatenate([run(x(pixels[i : i + self.batch_size]))
                               for i in range(0, len(pixels), self.batch_size)])

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        """A batch of `_batch`'s output as the model takes it (a text model's ids are that already)."""
        return batch if self.text else self.spec.model_input(batch)

    def _batch(self, items) -> np.ndarray:
        """What `predict` and `embed` turn their input into first: uint8 frames at the model's size (a text
        model: token ids)."""
        return self.text.ids(items) if self.text else self.pixels(items)

    def inputs(self, items):
        """`items` checked and decoded once, as `predict` takes each of them fastest: uint8 frames at the
        model's size (a text model: the sentences themselves, tokenized in `predict`)."""
        return self.text.inputs(items) if self.text else self.pixels(items)

    def labelled(self, path) -> tuple[list, list[str]]:
        """(items, labels) of labelled data on this device: DIR/<label>/*.png (a text model: a CSV/JSONL file)."""
        if self.text:
            return self.text.labelled(path)
        from edgetl.runtime.images import labelled_folder

        return labelled_folder(path)

    def engine_input(self, pixels) -> np.ndarray:
        """uint8 NHWC frames at the model's size (a text model: sentences) as the engine's own input tensor
        (what `engine.invoke` takes): what `predict` hands the engine, for timing the engine alone."""
        if self.text:
            return self.engine.prepare(self.text.ids(pixels))
        return self.engine.prepare(self._model_input(pixels))

    def embed(self, images) -> np.ndarray:
        """The backbone's outputs (N, width) float32 of `images` (paths, PIL images or uint8 HxWx3 arrays; a
        text model: sentences): the embedding, then the pooled taps (`layout`)."""
        return self._features(self._batch(images))

    def probabilities(self, images) -> np.ndarray:
        """Each class's probability (N, classes) for `images`."""
        return softmax_(self.logits(self.embed(images)))

    def predict(self, images, *, top_k: int = 1) -> list[Prediction]:
        """The best label and its probability per image (one, or a batch: a list, or an NxHxWx3 uint8
        array), with the `top_k` best (top_k >= 1)."""
        if top_k != 1 and (isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1):
            raise ConfigError(f"top_k={top_k!r}: ask for at least the best label", "pass top_k=1 or more")
        if self.text and type(images) is str and top_k == 1 and images.strip():  # one sentence: tokenize, invoke
            return [self._best_of(self.engine.run(self.text.tokenizer.ids([images])))]
        if type(images) is np.ndarray and images.shape == self._frame_shape and images.dtype == np.uint8 \
                and top_k == 1:
            return [self._best(images)]
        probs = softmax_(self.logits(self._features(self._batch(images))))
        labels = self.labels
        if top_k == 1:
            best = probs.argmax(1).tolist()
            return [Prediction(labels[i], p, i, ((labels[i], p),))
                    for i, p in zip(best, probs[range(len(best)), best].tolist(), strict=True)]
        out = []
        for row in probs:
            order = np.argsort(-row)[:top_k].tolist()
            out.append(Prediction(labels[order[0]], float(row[order[0]]), order[0],
                                  tuple((labels[i], float(row[i])) for i in order)))
        return out

    @cached_property
    def _frame_shape(self) -> tuple[int, int, int]:
        return (*self.input_size, 3)

    def _best(self, frame: np.ndarray) -> Prediction:
        """The camera loop's case, one frame at the model's size, best label only, with as few numpy calls as
        can be: right after an engine invoke each one runs on caches the engine emptied (README, Benchmarks).
        The softmax of one row is a few dozen floats, summed in Python; the same figures as `probabilities`."""
        return self._best_of(self.engine.run(self._model_input(frame[None])))

    def _best_of(self, features: np.ndarray) -> Prediction:
        """The best label of one row of backbone outputs: its softmax summed in Python (a few dozen floats)."""
        row = self.logits(features)[0].tolist()
        best = max(row)
        total = 0.0
        for v in row:
            total += math.exp(v - best)
        i = row.index(best)
        p = 1.0 / total
        label = self.labels[i]
        return Prediction(label, p, i, ((label, p),))

    def stream(self, frames, *, top_k: int = 1):
        """One `Prediction` per frame of `frames` (any iterable: a camera's generator), yielded as each
        frame arrives, so a camera loop never holds more than the frame in hand. A frame the model
        cannot take stops the stream with its error, naming the frame's place (those before it were
        yielded); an error raised by `frames` itself passes through unchanged."""
        for i, frame in enumerate(frames):
            try:
                predictions = self.predict(frame, top_k=top_k)
            except EdgetlError as exc:
                located = copy.copy(exc)
                located.message = f"frame {i}: {exc.message}"
                located.args = (located.message,)
                raise located from None
            if len(predictions) != 1:
                raise ConfigError(f"frame {i} is {len(predictions)} images", "stream() takes one frame at a time; "
                                  "pass a batch to predict()")
            yield predictions[0]

    def adapt(self, images=None, labels=None, *, unlabelled=None, config=None, unguarded: bool = False,
              lock_timeout: float | None = None):
        """Learn the head from `images` and their `labels` (new labels add classes; `config.replace_labels`:
        only these labels), and/or move its feature statistics to `unlabelled` frames of new conditions;
        commit it to the head store if the guard allows. Returns an `AdaptResult` saying what happened
        and why. Unlabelled frames alone are guarded on the bundle's checkset (its labelled images).

        The features are computed first, unlocked (the slow part); then, holding the store's lock
        (waiting up to `lock_timeout` s, default the store's, for another adapt or deploy), the head
        in force is read again and trained from, so the version committed names it as its parent
        and no concurrent commit is lost. A damaged head in force is trained past: from the newest
        intact one, which the result names (`parent`, `recovered`)."""
        config = config or AdaptConfig()
        if images is None and labels is None:
            if unlabelled is None:
                raise ConfigError("nothing to adapt from", "give images and labels, or unlabelled frames")
        else:
            labels = self._labels_for(images, labels)
        features = self.embed(images) if labels is not None else None
        frames = self.embed(unlabelled) if unlabelled is not None else None
        check = None
        if features is None and not unguarded:  # unlabelled alone: the bundle's own labelled images judge it
            if not self.bundle.manifest.checkset:
                raise ConfigError("unlabelled frames alone are judged on the bundle's checkset, and this bundle "
                                  "has none", "add labelled images of the new conditions (--data DIR), or pass "
                                              "--unguarded")
            pixels, names = self.bundle.checkset()
            check = (self.embed(pixels), names)

        def learn(head: Head):
            result = adapt_head(head, features, labels, config, self.layout, unlabelled=frames,
                                source=self.bundle.feature_statistics(), unguarded=unguarded)
            if check is not None:
                result = guard_with(result, head, self.layout, *check, config)
            return result

        if self.heads is None:  # an archive: nothing to commit to, but the guard's verdict still comes back
            result = learn(self.head)
            if result.committed:
                raise ConfigError("this model has no head store (it was loaded from an archive)",
                                  "unpack the bundle and load its dir to adapt it")
            return result
        with self.heads.lock(exclusive=True, timeout=lock_timeout):
            if os.path.realpath(self.bundle.path) != self._origin:
                raise ConfigError(f"{self.bundle.path} was replaced (a deploy) while these images were embedded",
                                  "adapt again: the new backbone needs its own embeddings")
            state = self.heads.in_force()
            result = learn(state.head)
            result.parent, result.recovered = state.version, state.problem
            if result.committed:
                result.version = self.heads.commit(result.head, result.to_dict(), parent=state.version)
                result.head = replace(result.head, version=result.version)
                self.head, self.head_note = result.head, None
        return result

    def _labels_for(self, images, labels) -> list[str]:
        """`labels` checked against `images` before the slow part: one non-empty name per image."""
        if labels is None or isinstance(labels, str | bytes):
            raise ConfigError("labels must be a list of class names, one per image", "e.g. ['stop', 'yield']")
        labels = list(labels)
        bad = next((lab for lab in labels if not isinstance(lab, str) or not lab.strip()), None)
        if bad is not None or not labels:
            raise ConfigError(f"labels must be non-empty class names (strings), not {bad!r}",
                              f"use the names the head knows ({', '.join(self.labels[:3])}, ...) or new ones")
        many = isinstance(images, list | tuple) or (isinstance(images, np.ndarray) and images.ndim == 4)
        if many and len(images) != len(labels):
            raise ConfigError(f"{len(images)} images and {len(labels)} labels", "give one label per image")
        return labels


def _check_input(spec: PreprocessSpec, engine: Engine, name: str) -> None:
    """The spec's input type and quantization (what quantize recorded) are the engine's own."""
    got = engine.input
    quantized = got.quantized
    if spec.pixels:  # the frame itself: uint8, and whatever quantization the engine gives it is its own
        same = got.dtype == "uint8" and (not quantized or (spec.input_scale is not None and math.isclose(
            spec.input_scale, float(got.scale), rel_tol=1e-6) and spec.input_zero_point == int(got.zero_point)))
    else:
        same = (spec.dtype == got.dtype and spec.input_scale is not None
                and math.isclose(spec.input_scale, float(got.scale), rel_tol=1e-6)
                and spec.input_zero_point == int(got.zero_point)) if quantized else spec.dtype == "float32"
    if not same:
        raise ConfigError(f"the bundle's preprocessing spec says input {spec.dtype} (scale {spec.input_scale}, "
                          f"zero point {spec.input_zero_point}), and the {name} engine's model takes {got.dtype} "
                          f"(scale {got.scale}, zero point {got.zero_point})",
                          "the bundle and its model disagree: compile it again")


__all__ = ["Head", "Model", "Prediction"]
