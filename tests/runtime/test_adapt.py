import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgetl.compile import compile_bundle
from edgetl.errors import ConfigError
from edgetl.runtime import Head, Model
from edgetl.runtime.adapt import AdaptConfig, adapt_head
from edgetl.runtime.heads import HeadStore
from edgetl.runtime.images import labelled_folder


@pytest.fixture
def bundle(compiled_run, tmp_path):
    compile_bundle(compiled_run, "host-cpu", tmp_path / "host")
    return tmp_path / "host"


def _labelled(root, n_per_class=None):
    paths, labels = labelled_folder(root)
    if n_per_class is None:
        return paths, labels
    keep = [i for i, lab in enumerate(labels) if labels[: i + 1].count(lab) <= n_per_class]
    return [paths[i] for i in keep], [labels[i] for i in keep]


def _new_class(signs):
    """A sign class the bundle has never seen, and unlike the four it knows (the catalogue's last)."""
    all_classes = sorted((signs["train"].parent / "train-all").iterdir())
    folder = all_classes[-1]
    return folder.name, sorted(folder.iterdir())


def _clusters(n_classes, per_class, seed, dim=16, names=None):
    """Embeddings in well-separated clusters (what a good backbone gives), with their labels."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, (26, dim))[: n_classes] if names is None else None
    names = names or [chr(ord("a") + i) for i in range(n_classes)]
    idx = [ord(n) - ord("a") for n in names]
    centres = np.random.default_rng(99).normal(0, 3, (26, dim))[idx]
    x = np.concatenate([c + rng.normal(0, 1, (per_class, dim)) for c in centres]).astype(np.float32)
    return x, [n for n in names for _ in range(per_class)]


def _trained_head():
    x, y = _clusters(3, 40, 0)
    empty = Head(np.zeros((3, 16), np.float32), np.zeros(3, np.float32), ("a", "b", "c"))
    return adapt_head(empty, x, y, unguarded=True).head


def _accuracy(head, x, labels):
    return float(np.mean([head.labels[i] == lab for i, lab in zip(head.logits(x).argmax(1), labels, strict=True)]))


def test_a_new_class_is_imprinted_from_three_examples_without_touching_the_others():
    head = _trained_head()
    new_x, new_y = _clusters(1, 3, 1, names=["d"])
    result = adapt_head(head, new_x, new_y, unguarded=True)
    assert result.committed and result.imprinted == ("d",) and result.epochs == 0
    np.testing.assert_array_equal(result.head.W[:3], head.W)  # the old rows exactly as they were
    np.testing.assert_array_equal(result.head.b[:3], head.b)
    test_x, test_y = _clusters(1, 50, 2, names=["d"])
    assert _accuracy(result.head, test_x, test_y) >= 0.9


def test_regression_adds_classes_and_keeps_the_old_ones():
    head = _trained_head()
    x, y = _clusters(5, 20, 3, names=["a", "b", "c", "d", "e"])
    result = adapt_head(head, x, y)
    assert result.committed and result.head.labels == ("a", "b", "c", "d", "e") and result.epochs > 0
    test_x, test_y = _clusters(5, 50, 4, names=["a", "b", "c", "d", "e"])
    assert _accuracy(result.head, test_x, test_y) >= 0.95


def test_images_of_some_classes_are_not_committed_without_the_others():
    """A batch of a new class and one old one refines the head in force (only the rows shown move), but
    no holdout of it can show what b and c lost: not committed unless unguarded, and it says why."""
    head = _trained_head()
    x, y = _clusters(2, 20, 8, names=["a", "d"])
    result = adapt_head(head, x, y)
    assert not result.committed and "no images of 2 class(es) the head knows (b, c)" in result.reason
    forced = adapt_head(head, x, y, unguarded=True)
    assert forced.committed and forced.head.labels == ("a", "b", "c", "d")
    test_x, test_y = _clusters(2, 50, 9, names=["a", "d"])
    assert _accuracy(forced.head, test_x, test_y) >= 0.9


def test_a_refine_without_taps_keeps_the_taps_the_head_in_force_reads():
    from edgetl.runtime.features import Layout, Segment

    layout = Layout((Segment("embedding", 16), Segment("s2", 8)))
    x, y = _clusters(3, 30, 10, dim=24)
    empty = Head(np.zeros((3, 24), np.float32), np.zeros(3, np.float32), ("a", "b", "c"), dims=(24,))
    empty = Head(empty.W, empty.b, empty.labels, taps=("embedding", "s2"), dims=(16, 8))
    tapped = adapt_head(empty, x, y, AdaptConfig(), layout, unguarded=True).head
    again = adapt_head(tapped, x[:40], y[:40], AdaptConfig(taps=False), layout, unguarded=True)
    assert again.head.taps == ("embedding", "s2")  # a refine over the segments it reads, not a KeyError


def test_the_guard_refuses_a_head_that_forgets_the_old_classes():
    head = _trained_head()
    x, y = _clusters(3, 80, 5)  # 16 holdout images a class: enough for a real loss to be significant
    lookalike, _ = _clusters(1, 80, 6, names=["a"])  # a "new" sign the camera cannot tell from class a
    result = adapt_head(head, np.concatenate([x, lookalike]), y + ["d"] * 80)
    assert not result.committed and "significantly worse" in result.reason, result.reason
    test = result.details["guard"]
    assert test["rule"] == "mcnemar" and test["p_worse"] < 0.05 and test["worse"] > test["better"]
    assert result.old_top1_after < result.old_top1_before - 1
    fixed = adapt_head(head, np.concatenate([x, lookalike]), y + ["d"] * 80, AdaptConfig(margin=1.0))
    assert not fixed.committed and "would drop" in fixed.reason and fixed.details["guard"]["rule"] == "margin"
    assert adapt_head(head, x, y).committed  # the old classes alone pass


def test_without_old_class_images_the_guard_cannot_judge():
    new_x, new_y = _clusters(1, 20, 6, names=["d"])
    result = adapt_head(_trained_head(), new_x, new_y)
    assert not result.committed and "guard cannot check" in result.reason


def test_regression_is_deterministic_for_a_seed():
    x, y = _clusters(4, 20, 7, names=["a", "b", "c", "d"])
    a = adapt_head(_trained_head(), x, y, AdaptConfig(seed=3))
    b = adapt_head(_trained_head(), x, y, AdaptConfig(seed=3))
    np.testing.assert_array_equal(a.head.W, b.head.W)
    assert a.epochs == b.epochs > 0


def _imprint_new_sign(model, signs):
    name, images = _new_class(signs)
    result = model.adapt(images[:3], [name] * 3, unguarded=True)
    assert result.committed and result.version == model.heads.current_version() > 0
    return name


def test_a_committed_head_is_in_force_on_the_next_load_and_the_bundle_still_verifies(bundle, signs):
    model = Model.load(bundle)
    name = _imprint_new_sign(model, signs)
    again = Model.load(bundle)
    assert again.labels[-1] == name and again.head.version == 1
    assert len(again.predict(_labelled(signs["test"], 1)[0])) == 4


def test_rollback_restores_the_previous_head_and_the_cli_says_so(bundle, signs, capsys):
    from edgetl.cli import main

    name = _imprint_new_sign(Model.load(bundle), signs)
    assert main(["adapt", str(bundle), "--rollback"]) == 0
    assert "head version 0 in force" in capsys.readouterr().err
    assert name not in Model.load(bundle).labels
    assert main(["adapt", str(bundle), "--rollback"]) == 2  # nothing left to roll back
    assert "nothing to roll back" in capsys.readouterr().err


def test_a_corrupt_head_file_is_a_clear_error_and_rollback_recovers(bundle, signs):
    model = Model.load(bundle)
    _imprint_new_sign(model, signs)
    (bundle.with_name("host.heads") / "head-000001.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(ConfigError, match=r"head 1 \(.*head-000001.npz\) is damaged: BadZipFile.*--rollback"):
        Model.load(bundle)
    assert model.heads.rollback().version == 0
    again = Model.load(bundle)
    assert again.heads.current_version() == 0 and again.labels == tuple(model.bundle.manifest["labels"])


WRITER = """
import sys, numpy as np
from edgetl.runtime import Head
from edgetl.runtime.heads import HeadStore
base = Head(np.zeros((3, 64), np.float32), np.zeros(3, np.float32), ("a", "b", "c"))
store = HeadStore(sys.argv[1], base, keep=3)
print("ready", flush=True)
while True:
    v = max([0, *store.versions()]) + 1  # the version commit will give it
    W = np.full((3, 64), float(v), np.float32)  # each head's values name its version
    store.commit(Head(W, np.full(3, float(v), np.float32), base.labels), {})
"""


def test_a_process_killed_while_writing_leaves_a_whole_head_in_force(tmp_path):
    base = Head(np.zeros((3, 64), np.float32), np.zeros(3, np.float32), ("a", "b", "c"))
    root = tmp_path / "heads"
    rng = np.random.default_rng(0)
    last = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, somewhere: no cleanup runs
        proc.wait()
        store = HeadStore(root, base, keep=3)
        head = store.current()  # must load: never a torn file, never a missing one
        version = store.current_version()
        assert version >= last and np.all(head.W == float(head.version)) and head.version == version
        last = version
    assert last > 0


def test_a_head_over_the_taps_is_standardised_and_reads_every_segment(bundle, signs):
    model = Model.load(bundle)
    assert len(model.layout.names) > 2  # the embedding and the taps auto chose
    paths, labels = _labelled(signs["city_b"])
    result = model.adapt(paths, labels, unguarded=True)
    head = Model.load(bundle).head
    assert result.committed and head.taps == model.layout.usable and head.width == model.layout.width
    assert head.mean is not None and head.std is not None and (head.std > 0).all()
    assert result.to_dict()["tried"] and result.to_dict()["chosen"]
    plain = model.adapt(paths, labels, config=AdaptConfig(taps=False), unguarded=True)
    assert plain.head.taps == ("embedding",) and plain.head.width == model.layout.dims(("embedding",))[0]


def test_the_bundles_own_head_reads_only_the_embedding(bundle):
    model = Model.load(bundle)
    assert model.head.taps == ("embedding",) and model.head.mean is None
    assert model.bundle.manifest.features == "features.npz" and model.bundle.feature_statistics() is not None


def _renamed(src, tmp_path, prefix):
    """The same images under other label names: another country's labels for its own signs."""
    out = tmp_path / f"{prefix}-labels"
    for folder in sorted(src.iterdir()):
        (out / f"{prefix}-{folder.name}").mkdir(parents=True)
        for image in sorted(folder.iterdir()):
            (out / f"{prefix}-{folder.name}" / image.name).symlink_to(image)
    return out


def test_replace_labels_learns_only_the_labels_given_and_rolls_back(bundle, signs, tmp_path, capsys):
    from edgetl.cli import main

    before = Model.load(bundle).labels
    data = _renamed(signs["train"], tmp_path, "de")
    assert main(["adapt", str(bundle), "--data", str(data), "--replace-labels", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"committed": true' in out and "holdout of the labels given" in out
    model = Model.load(bundle)
    assert set(model.labels) == {f"de-{c}" for c in before} and model.head_version == 1
    test_paths, test_labels = _labelled(signs["test"])
    hits = [p.label == f"de-{t}" for p, t in zip(model.predict(test_paths), test_labels, strict=True)]
    assert np.mean(hits) >= 0.5  # learnt, not guessed (4 classes: chance is 0.25)
    assert main(["adapt", str(bundle), "--rollback"]) == 0
    assert Model.load(bundle).labels == before


def test_unlabelled_frames_with_a_corrupt_and_an_odd_sized_one(bundle, signs, tmp_path, capsys):
    from PIL import Image

    from edgetl.cli import main

    frames = tmp_path / "frames" / "cam0"
    frames.mkdir(parents=True)
    for i, path in enumerate(_labelled(signs["city_b"])[0]):
        (frames / f"{i:03d}.png").symlink_to(path)
    (frames / "torn.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a write cut short by a power loss
    Image.new("RGB", (50, 37), (90, 120, 30)).save(frames / "odd.png")  # another camera's size: resized
    before = Model.load(bundle).head
    code = main(["adapt", str(bundle), "--unlabelled", str(frames.parent), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    import json

    record = json.loads(out)
    assert record["unlabelled"] == len(_labelled(signs["city_b"])[0]) + 1 and record["skipped"] == 1
    assert "torn.png" in record["skipped_files"][0] and "checkset" in record["reason"]
    if record["committed"]:  # the bundle's checkset judged it: only the statistics moved, not the weights
        model = Model.load(bundle)
        mean, std = (s[: before.width] for s in model.bundle.feature_statistics())
        after = model.head
        assert np.allclose(after.W, before.W * std, rtol=1e-4, atol=1e-9) and not np.allclose(after.mean, mean)


def test_unlabelled_frames_alone_need_a_checkset_or_unguarded(bundle, signs):
    model = Model.load(bundle)
    frames = _labelled(signs["city_b"])[0]
    result = model.adapt(unlabelled=frames, unguarded=True)
    assert result.committed and result.unlabelled == len(frames) and result.head.mean is not None


def test_a_head_for_other_taps_is_refused_with_a_clear_message(bundle):
    model = Model.load(bundle)
    layout = model.layout
    wrong = Head(np.zeros((4, 10), np.float32), np.zeros(4, np.float32), model.labels, taps=("embedding", "nowhere"),
                 dims=(6, 4))
    HeadStore.beside(bundle, model.head, layout=layout).commit(wrong, {})
    with pytest.raises(ConfigError, match=r"does not fit this bundle: it was trained for taps \(embedding, nowhere"):
        Model.load(bundle)
    with pytest.raises(ConfigError, match="does not fit this bundle"):
        model.logits(model.embed(np.zeros((1, 32, 32, 3), np.uint8)), wrong)
    assert Model.load(bundle, fallback_head=True).head_note  # adapt and rollback get past it


def test_a_first_head_on_a_bundle_without_classes_learns_from_every_image():
    """No old head to guard: the holdout only chooses the regularisation, then every image is learnt from."""
    rng = np.random.default_rng(3)  # classes apart, plus a strong shared nuisance: a regression beats class means
    nuisance = rng.normal(0, 4, (40, 1)) * rng.normal(0, 1, 32)
    x = (np.repeat(rng.normal(0, 1, (4, 32)), 10, axis=0) + 0.5 * rng.normal(0, 1, (40, 32)) + nuisance
         ).astype(np.float32)
    y = [c for c in "abcd" for _ in range(10)]
    empty = Head(np.zeros((0, 32), np.float32), np.zeros(0, np.float32), ())
    result = adapt_head(empty, x, y)
    assert result.committed and result.head.labels == ("a", "b", "c", "d")
    assert result.to_dict()["refit"].endswith("on all 40 images")
    # the refit head is the holdout's choice at its l2, fitted on all 40 rows: it differs from one fitted on 32
    held_out = adapt_head(Head(np.zeros((4, 32), np.float32), np.zeros(4, np.float32), ("a", "b", "c", "d")), x, y,
                          unguarded=True)
    assert "refit" not in held_out.to_dict() and not np.allclose(result.head.W, held_out.head.W)
