from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data import load_images, scan, split_train_val
from edgetl.errors import DataError


def _image(path: Path, size=(20, 30), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_empty_dir_is_refused_with_layout_hint(tmp_path):
    with pytest.raises(DataError, match="no class folders") as err:
        scan(tmp_path)
    assert "DIR/<class>" in str(err.value)


def test_missing_dir_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nope")


def test_loose_images_without_class_folders_are_explained(tmp_path):
    _image(tmp_path / "a.png")
    with pytest.raises(DataError, match="1 loose images"):
        scan(tmp_path)


def test_one_class_is_refused(tmp_path):
    _image(tmp_path / "stop" / "1.png")
    with pytest.raises(DataError, match="only one class"):
        scan(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    _image(tmp_path / "stop" / "1.png")
    (tmp_path / "yield").mkdir()
    (tmp_path / "yield" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="yield"):
        scan(tmp_path)


def test_any_size_and_format_is_read_at_the_model_size(tmp_path):
    _image(tmp_path / "a" / "x.png", (50, 20))
    _image(tmp_path / "a" / "y.jpg", (300, 200))
    _image(tmp_path / "b" / "z.ppm", (7, 9))
    _image(tmp_path / "b" / "w.bmp", (64, 64))
    folder = scan(tmp_path)
    assert folder.classes == ("a", "b") and folder.counts() == [2, 2]
    loaded = load_images(folder.samples, (24, 24))
    assert loaded.images.shape == (4, 24, 24, 3) and loaded.images.dtype == np.uint8
    assert loaded.labels.tolist() == [0, 0, 1, 1]


def test_corrupt_image_is_skipped_by_path_or_refused_with_strict(tmp_path):
    for i in range(3):
        _image(tmp_path / "a" / f"{i}.png")
        _image(tmp_path / "b" / f"{i}.png")
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    folder = scan(tmp_path)
    loaded = load_images(folder.samples, (16, 16))
    assert len(loaded.labels) == 6
    assert [p for p, _ in loaded.skipped] == [bad]
    with pytest.raises(DataError, match="broken.png"):
        load_images(folder.samples, (16, 16), strict=True)


def test_val_dir_with_an_unknown_class_is_refused(tmp_path):
    _image(tmp_path / "train" / "a" / "1.png")
    _image(tmp_path / "train" / "b" / "1.png")
    _image(tmp_path / "val" / "c" / "1.png")
    train = scan(tmp_path / "train")
    with pytest.raises(DataError, match="classes the training data does not: c"):
        scan(tmp_path / "val", train.classes, what="val")


def test_split_is_stratified_deterministic_and_stable_when_data_grows(tmp_path):
    for cls in ("a", "b"):
        for i in range(10):
            _image(tmp_path / cls / f"{i:02d}.png")
    train, val = split_train_val(scan(tmp_path), 0.2, seed=0)
    assert len(val) == 4 and sorted(label for _, label in val) == [0, 0, 1, 1]
    assert split_train_val(scan(tmp_path), 0.2, seed=0) == (train, val)
    assert split_train_val(scan(tmp_path), 0.2, seed=1)[1] != val
    for i in range(10, 12):  # new images arrive: no old image may change sides
        _image(tmp_path / "a" / f"{i:02d}.png")
    train2, val2 = split_train_val(scan(tmp_path), 0.2, seed=0)
    old = {p for p, _ in train}
    assert not old & {p for p, _ in val2}


def test_data_show_counts_unreadable_images_apart_per_class(tmp_path, capsys):
    from edgetl.cli import main

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    whole = (tmp_path / "dog" / "0.png").read_bytes()
    (tmp_path / "dog" / "cut.png").write_bytes(whole[:20])
    assert main(["data", "show", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    rows = {cells[0]: cells[1:] for line in captured.out.splitlines()
            if len(cells := [c.strip() for c in line.split("│") if c.strip()]) == 3}
    assert rows["cat"] == ["3", "1"] and rows["dog"] == ["3", "1"]
    assert "6 readable images, 2 unreadable (training skips them" in captured.err
