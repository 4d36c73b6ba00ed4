"""Scale-out through PyTorch's own engine: torchrun, two processes, gloo on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_torchrun_two_processes_train_one_run(tmp_path, signs):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "edgetl", "finetune", "--data", str(signs["train"]), "--test", str(signs["test"]),
           "--out", str(out), "--backbone", "mobilenet_v3_small", "--weights", "none", "--img-size", "32",
           "--epochs", "2", "--head-epochs", "10", "--batch-size", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "finetune.json").read_text())
    assert record["world_size"] == 2
    assert record["epochs"] >= 1 and record["test_top1"] is not None
    assert Path(out / "checkpoint.pt").is_file()
    assert proc.stdout.count("finetune:") == 1  # only rank 0 prints the result table
