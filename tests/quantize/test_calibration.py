import shutil

import pytest

from edgetl.cli import main
from edgetl.errors import ConfigError, DataError
from edgetl.quantize import calibration


def _write(tmp_path, text):
    path = tmp_path / "set.toml"
    path.write_text(text)
    return path


def test_minimal_set_is_stratified_and_seeded(signs, tmp_path):
    path = _write(tmp_path, f'data = "{signs["train"]}"\nsamples = 32\nseed = 0\n')
    a = calibration.select(calibration.read(path))
    assert len(a.chosen) == 32 and set(a.per_class().values()) == {8}
    assert a.chosen == calibration.select(calibration.read(path)).chosen  # same file, same images
    again = _write(tmp_path, f'data = "{signs["train"]}"\nsamples = 32\nseed = 1\n')
    other = calibration.select(calibration.read(again))
    assert other.chosen != a.chosen


def test_data_is_relative_to_the_file(signs, tmp_path):
    shutil.copytree(signs["train"], tmp_path / "imgs")
    path = _write(tmp_path, 'data = "imgs"\nsamples = 40\n')
    assert calibration.select(calibration.read(path)).calib.source == (tmp_path / "imgs").resolve()


def test_list_file(signs, tmp_path):
    files = sorted(signs["train"].glob("*/*.png"))
    (tmp_path / "calib.txt").write_text("\n".join(str(p) for p in files))
    selection = calibration.select(calibration.read(_write(tmp_path, 'list = "calib.txt"\nsamples = 32\n')))
    assert len(selection.chosen) == 32 and len(selection.classes) == 4


def test_too_small_set_is_refused(signs, tmp_path, capsys):
    with pytest.raises(ConfigError, match="samples = 8 is too small"):
        calibration.read(_write(tmp_path, f'data = "{signs["train"]}"\nsamples = 8\n'))
    with pytest.raises(DataError, match="asks for 500 samples but .* holds 48"):
        calibration.select(calibration.read(_write(tmp_path, f'data = "{signs["train"]}"\nsamples = 500\n')))
    assert main(["calib", "show", str(tmp_path / "set.toml")]) == 2
    assert "holds 48" in capsys.readouterr().err


def test_one_class_set_is_refused(signs, tmp_path):
    one = sorted(signs["train"].glob("*/*.png"))[:40]
    one = [p for p in one if p.parent == one[0].parent]
    (tmp_path / "one.txt").write_text("\n".join(str(p) for p in one * 4))
    with pytest.raises(DataError, match="every calibration image is of one class"):
        calibration.select(calibration.read(_write(tmp_path, 'list = "one.txt"\nsamples = 32\n')))


def test_unreadable_image_is_named(dataset, tmp_path, capsys):
    bad = sorted(dataset.glob("*/*.png"))[0]
    bad.write_bytes(b"not a png")
    path = _write(tmp_path, f'data = "{dataset}"\nsamples = 48\n')
    assert main(["calib", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "unreadable" in err


def test_bad_keys_and_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'sample'"):
        calibration.read(_write(tmp_path, 'data = "x"\nsample = 64\n'))
    with pytest.raises(ConfigError, match="samples must be a int"):
        calibration.read(_write(tmp_path, 'data = "x"\nsamples = "many"\n'))
    with pytest.raises(ConfigError, match="exactly one of"):
        calibration.read(_write(tmp_path, 'samples = 64\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        calibration.read(_write(tmp_path, 'data = \n'))


def test_calib_show_prints_per_class_counts(signs, tmp_path, capsys):
    path = _write(tmp_path, f'data = "{signs["train"]}"\nsamples = 32\n')
    assert main(["calib", "show", str(path)]) == 0
    captured = capsys.readouterr()
    assert "32 of 48 images" in captured.err and "8" in captured.out  # the detail in a log line, counts in the table
    assert all(len(line) < 100 for line in captured.out.splitlines())  # a short title, on one line


def test_calib_show_of_a_directory_says_a_toml_file_is_wanted(tmp_path, capsys):
    assert main(["calib", "show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a directory, not a calibration set" in err and ".toml file" in err
    assert "does not exist" not in err
