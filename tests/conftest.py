"""Shared fixtures: small synthetic datasets made once per session (tests never read ../shared)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgetl.data import synth
from tests.standins import ARM64_ROOT, QEMU, SSHD, LoopbackSshd, need
from tests.texts import sentences, tiny_encoder, write_csv

pytest_plugins = ["pytester"]  # the edgetl pytest plugin is tested by running pytest on test files

# Four classes that differ in shape and colour keep the tests' runs small and fast.
FEW = 4


def _few_classes(src: Path, dst: Path, n: int = FEW) -> Path:
    dst.mkdir(parents=True)
    for folder in sorted(src.iterdir())[:n]:
        shutil.copytree(folder, dst / folder.name)
    return dst


@pytest.fixture(scope="session")
def signs(tmp_path_factory) -> dict[str, Path]:
    """city-a train (12/class), city-a test and city-b test (6/class), 4 classes, 32 px."""
    root = tmp_path_factory.mktemp("signs")
    out = {}
    for name, domain, per_class, seed in (("train", "city-a", 12, 1), ("test", "city-a", 6, 2),
                                          ("city_b", "city-b", 6, 3)):
        full = synth.synthesize(root / f"{name}-all", domain, per_class, size=32, seed=seed)
        out[name] = _few_classes(full, root / name)
    return out


@pytest.fixture
def dataset(tmp_path, signs) -> Path:
    """A private, writable copy of the training set (tests may corrupt it)."""
    return Path(shutil.copytree(signs["train"], tmp_path / "data"))


@pytest.fixture(scope="session")
def trained_run(signs, tmp_path_factory) -> Path:
    """A small real run (efficientnet_lite0 at 32 px, 4 classes) with a test split; tests copy it."""
    from edgetl.train.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("runs") / "signs"
    finetune(FinetuneConfig(data=signs["train"], test=signs["test"], out=out, img_size=32, epochs=1,
                            head_epochs=30))
    return out


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    """A private copy of the trained run (tests write exports and quantized models into it)."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def calib_file(signs, tmp_path) -> Path:
    path = tmp_path / "calib.toml"
    path.write_text(f'data = "{signs["train"]}"\nsamples = 32\nseed = 0\n')
    return path


@pytest.fixture(scope="session")
def quantized_run(trained_run, signs, tmp_path_factory) -> Path:
    """The small run with int8 ONNX and TFLite results (minmax, no budget): what compile reads."""
    from edgetl.quantize import quantize

    out = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("quantized") / "signs"))
    calib = out.parent / "calib.toml"
    calib.write_text(f'data = "{signs["train"]}"\nsamples = 32\nseed = 0\n')
    for fmt in ("onnx", "tflite"):
        quantize(out, calib, fmt=fmt, method="minmax", max_drop=100)
    # compile picks int8 only where it measured faster; on this tiny model the two are within noise, so
    # the tests pin what they build on (host: fp32), as test_bundle's precision test sets it both ways
    record_file = out / "quantize" / "onnx" / "quantize.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "int8_over_fp32_latency": max(1.2, record["int8_over_fp32_latency"])}))
    return out


@pytest.fixture
def compiled_run(quantized_run, tmp_path) -> Path:
    """A private copy of the quantized run (tests write bundles into it)."""
    return Path(shutil.copytree(quantized_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> LoopbackSshd:
    """A real OpenSSH server on loopback for the session, with its own host and user keys."""
    need(SSHD, "openssh-server is not installed (`make test` installs it with apt where it can)")
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def arm64_root() -> Path:
    """The emulated Raspberry Pi 4's files: an arm64 Python with numpy, onnxruntime and LiteRT."""
    need(QEMU, "qemu-user-static is not installed (`make test` installs it with apt where it can)")
    need(ARM64_ROOT if (ARM64_ROOT / ".complete").is_file() else None,
         f"no emulated aarch64 device at {ARM64_ROOT} (`make test` builds it with tools/arm64-root.sh)")
    return ARM64_ROOT


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("texts")
    return {"encoder": tiny_encoder(root / "tiny-bert"),
            "train": write_csv(root / "train.csv", sentences(16, seed=1)),
            "test": write_csv(root / "test.csv", sentences(8, seed=2))}


@pytest.fixture(scope="session")
def text_run(text_data, tmp_path_factory) -> Path:
    """A fine-tuned text run with its ONNX and TFLite exports and an int8 ONNX, made through the CLI."""
    run = tmp_path_factory.mktemp("runs") / "intents"
    from edgetl.cli import main

    assert main(["finetune", "--data", str(text_data["train"]), "--test", str(text_data["test"]),
                 "--backbone", f"hf:{text_data['encoder']}", "--lr", "1e-3", "--epochs", "4",
                 "--out", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    assert main(["export", str(run), "--format", "tflite"]) == 0
    assert main(["quantize", str(run)]) == 0
    return run
