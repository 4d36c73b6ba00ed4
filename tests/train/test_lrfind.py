"""`edgetl lr-find`: the sweep, its suggestion, its table and plot, from a run dir or a TOML file."""

import pytest

from edgetl.cli import main
from edgetl.errors import ConfigError
from edgetl.train.finetune import FinetuneConfig, finetune
from edgetl.train.lrfind import config_from, sweep, valley

SMALL = dict(backbone="mobilenet_v3_small", weights="none", img_size=32, head_epochs=5, batch_size=16)


def test_valley_is_halfway_down_the_longest_fall():
    losses = [3.0, 3.0, 2.9, 2.5, 2.0, 1.5, 1.0, 0.9, 2.0, 9.0]
    assert valley(losses) == 3  # the fall runs from index 0 to 7: fastai picks index 0 + 2 + 1


def test_the_suggestion_falls_inside_the_sweep(tmp_path, signs):
    config = FinetuneConfig(data=signs["train"], out=tmp_path / "unused", **SMALL)
    result = sweep(config, steps=30, start=1e-5, end=10.0)
    assert len(result.lrs) == len(result.losses) >= 5
    assert list(result.lrs) == sorted(result.lrs) and result.lrs[0] == pytest.approx(1e-5)
    for lr in (result.suggestion, result.steepest, result.minimum):
        assert result.lrs[0] <= lr <= result.lrs[-1]
    assert not (tmp_path / "unused").exists()  # a sweep writes no run


def test_cli_from_a_toml_file_prints_the_curve_and_writes_the_plot(tmp_path, signs, capsys, monkeypatch):
    config = tmp_path / "finetune.toml"
    config.write_text(f'data = "{signs["train"]}"\nbackbone = "mobilenet_v3_small"\nweights = "none"\n'
                      'img-size = 32\nhead_epochs = 5\n')
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", str(config), "--steps", "20"]) == 0
    printed = capsys.readouterr()
    assert "suggested --lr" in printed.err and "loss (smoothed)" in printed.out
    plot = tmp_path / "lr-find.png"
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert main(["lr-find", str(config), "--steps", "20"]) == 0  # its own plot: replaced


def test_cli_refuses_to_replace_a_file_it_did_not_write(tmp_path, signs, capsys):
    config = tmp_path / "finetune.toml"
    config.write_text(f'data = "{signs["train"]}"\n')
    mine = tmp_path / "holiday.png"
    mine.write_bytes(b"\x89PNG not edgetl's")
    assert main(["lr-find", str(config), "--plot", str(mine)]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert mine.read_bytes() == b"\x89PNG not edgetl's"


def test_a_run_dir_gives_its_recorded_recipe(tmp_path, signs):
    run = tmp_path / "run"
    finetune(FinetuneConfig(data=signs["train"], out=run, epochs=0, lr_decay=0.5, **SMALL))
    config = config_from(run)
    assert config.data == signs["train"].resolve() or config.data == signs["train"]
    assert (config.backbone, config.lr_decay, config.img_size) == ("mobilenet_v3_small", 0.5, 32)


def test_a_bad_config_file_is_one_error_naming_the_key(tmp_path):
    config = tmp_path / "finetune.toml"
    config.write_text('data = "x"\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        config_from(config)
    with pytest.raises(ConfigError, match="neither a run dir nor a .toml file"):
        config_from(tmp_path / "notes.txt")
