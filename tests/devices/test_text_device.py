"""A text bundle on the emulated Raspberry Pi 4 (an arm64 Python under qemu, with numpy, onnxruntime and
tokenizers wheels for aarch64): deployed, and predicting the host's labels on the bundle's checkset."""

from __future__ import annotations

import json

import pytest

from edgetl import devices
from edgetl.compile import compile_bundle
from edgetl.devices.deploy import bundles_dir, deploy, runtime_argv
from edgetl.runtime import Model

pytestmark = pytest.mark.hil


def test_the_emulated_pi4_predicts_what_the_host_predicts_on_the_text_checkset(arm64_root, text_run, tmp_path):
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "pi.toml").write_text(f'name = "pi"\ntarget = "rpi4"\ntransport = "emulated"\n'
                                                f'[emulated]\nroot = "{arm64_root}"\nworkdir = "{tmp_path / "w"}"\n')
    pi = devices.read(tmp_path / "fleet" / "pi.toml")
    bundle = tmp_path / "b" / "intents"
    compile_bundle(text_run, "rpi4", bundle)
    assert deploy(bundle, pi, timeout=600)["changed"]
    with Model.load(bundle, machine="any") as host:
        texts, _ = host.bundle.checkset()
        expected = [p.label for p in host.predict(texts)]
    active = f"{bundles_dir(pi)}/intents"
    done = pi.run(runtime_argv(pi, ["predict", active, *texts, "--json", "--any-arch"]), timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-800:]
    got = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    assert [r["text"] for r in got] == texts
    assert [r["label"] for r in got] == expected
