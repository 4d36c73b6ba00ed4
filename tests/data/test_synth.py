import hashlib

import numpy as np
import pytest
from PIL import Image

from edgetl.data import scan, synth
from edgetl.errors import DataError


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_writes_an_imagefolder_of_at_least_12_classes(tmp_path):
    out = synth.synthesize(tmp_path / "a", "city-a", per_class=2, size=40, seed=0)
    folder = scan(out)
    assert len(folder.classes) >= 12 and folder.counts() == [2] * len(folder.classes)
    with Image.open(folder.samples[0][0]) as im:
        assert im.size == (40, 40) and im.mode == "RGB"


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = synth.synthesize(tmp_path / "a", "city-b", per_class=2, size=32, seed=7)
    b = synth.synthesize(tmp_path / "b", "city-b", per_class=2, size=32, seed=7)
    c = synth.synthesize(tmp_path / "c", "city-b", per_class=2, size=32, seed=8)
    assert _digest(a) == _digest(b)
    assert set(_digest(a).values()).isdisjoint(_digest(c).values())


def test_city_b_looks_like_other_streets():
    """Darker (night, rain) and lower in contrast (fog, blur, JPEG) than city-a, over many signs."""
    def stats(domain):
        imgs = np.stack([np.asarray(synth.render(domain, c, i, 48, 0), np.float32)
                         for c in range(len(synth.CLASSES)) for i in range(3)])
        contrast = imgs.std(axis=(1, 2, 3)).mean()
        return imgs.mean(), contrast
    a_mean, a_contrast = stats("city-a")
    b_mean, b_contrast = stats("city-b")
    assert b_mean < a_mean - 10
    assert b_contrast < a_contrast


def test_refuses_to_write_into_a_non_empty_dir_and_keeps_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        synth.synthesize(out, "city-a", 1)
    assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, match", [({"domain": "city-c"}, "unknown domain"),
                                            ({"per_class": 0}, "per-class"), ({"size": 4}, "size")])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    args = {"domain": "city-a", "per_class": 1, "size": 32} | kwargs
    with pytest.raises(DataError, match=match):
        synth.synthesize(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()
