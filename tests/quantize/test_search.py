import pytest

from edgetl.cli import main
from edgetl.quantize import QuantizeError, SearchBudget, Trial, _fewest_float, quantize
from tests.quantize.test_quantize import _fragile_run


def _trial(k: int, drop: float) -> Trial:
    return Trial("entropy", tuple(f"layer{i}" for i in range(k)), None, 100 - drop, drop, 1.0)


def test_a_search_out_of_trials_keeps_the_best_result_found_within_budget():
    tried = []

    def try_k(k):  # passes from 3 float layers on; the bound allows 3 trials (1, 2, 4), not the bisection to 3
        if len(tried) == 3:
            return None
        tried.append(k)
        return _trial(k, 0.5 if k >= 3 else 5.0)

    best = _fewest_float(try_k, 40, 1.0)
    assert tried == [1, 2, 4] and len(best.float_layers) == 4 and best.drop <= 1.0


def test_a_search_out_of_trials_before_any_pass_finds_nothing():
    assert _fewest_float(lambda k: None if k > 1 else _trial(k, 5.0), 40, 1.0) is None


def test_the_trial_bound_is_kept_shown_and_recorded(signs, tmp_path, calib_file, capsys):
    from edgetl.console import Console

    run = _fragile_run(signs, tmp_path)
    with pytest.raises(QuantizeError, match="the float-layer search stopped at its bound of 1 trials") as info:
        quantize(run.path, calib_file, fmt="onnx", method="auto", max_drop=3.0, run=run,
                 search=SearchBudget(trials=1), console=Console())
    assert "--search-trials" in info.value.hint and not (run.path / "quantize").exists()
    assert len([t for t in info.value.trials if t["float_layers"]]) == 1
    assert "trial 1/1:" in capsys.readouterr().err


def test_the_time_bound_stops_the_search(signs, tmp_path, calib_file):
    run = _fragile_run(signs, tmp_path)
    with pytest.raises(QuantizeError, match="stopped at its time bound of 0.001 s"):
        quantize(run.path, calib_file, fmt="onnx", method="auto", max_drop=3.0, run=run,
                 search=SearchBudget(trials=6, seconds=0.001))


def test_a_search_within_its_bounds_records_how_it_went(signs, tmp_path, calib_file):
    run = _fragile_run(signs, tmp_path)
    record = quantize(run.path, calib_file, fmt="onnx", method="auto", max_drop=3.0, run=run)
    search = record["search"]
    assert search["max_trials"] == SearchBudget().trials and search["stopped"] is None
    assert 1 <= search["trials"] <= search["max_trials"] and search["layers_ranked"] > 0
    assert record["drop"] <= 3.0


@pytest.mark.parametrize("flags, message", [
    (["--search-trials", "0"], "--search-trials must be a whole number >= 1, not 0"),
    (["--search-seconds", "-5"], "--search-seconds must be a finite number > 0, not -5.0"),
    (["--search-seconds", "inf"], "--search-seconds must be a finite number > 0, not inf"),
])
def test_search_bounds_are_checked_before_any_work(run_dir, calib_file, capsys, flags, message):
    assert main(["quantize", str(run_dir), "--calib", str(calib_file), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err
    assert not (run_dir / "quantize").exists() and not (run_dir / "export").exists()
