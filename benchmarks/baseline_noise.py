"""How often `edgetl check --baseline` cries wolf on this machine, and whether it catches a slower bundle.

Two bundles named alike from the same synthetic road signs (4 classes, efficientnet_lite0, fp32 ONNX
for host-cpu): one fine-tuned at 32 px, one at 64 px (four times the pixels: genuinely more work per
frame; --slowed-size). On this machine as a local device, PAIRS pairs of checks of the 32 px bundle one after the
other (same bundle twice: every latency failure is a false alarm), and SLOWED pairs of the 32 px then
the 64 px bundle (every pass is a miss), each judged by the default gate (5% slowdown, 95% block
bootstrap interval, on the frames the OS did not preempt). Beside it, the same pairs judged on all
frames, preempted or not: what the gate would say without leaving out the host's interference.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from _common import emit

from edgetl import devices
from edgetl.check import Plan, baseline, check_one, manifest_of
from edgetl.compile import compile_bundle
from edgetl.data import synth
from edgetl.export import export
from edgetl.train.finetune import FinetuneConfig, finetune

LOOSE = "[budgets]\nlatency_p95_ms = 1000\nmin_top1 = 0\nmax_rss_mb = 8000\n"


def _data(root: Path) -> dict[str, Path]:
    out = {}
    for name, domain, per_class, seed in (("train", "city-a", 12, 1), ("test", "city-a", 6, 2)):
        full = synth.synthesize(root / f"{name}-all", domain, per_class, size=32, seed=seed)
        out[name] = root / name
        out[name].mkdir()
        for folder in sorted(full.iterdir())[:4]:
            shutil.copytree(folder, out[name] / folder.name)
    return out


def _bundle(root: Path, data: dict[str, Path], size: int) -> Path:
    run = root / f"run{size}"
    finetune(FinetuneConfig(data=data["train"], test=data["test"], out=run, img_size=size, epochs=1, head_epochs=30))
    export(run, "onnx")
    out = root / f"b{size}" / "signs"
    compile_bundle(run, "host-cpu", out)
    return out


def _judge(before, after, gate: baseline.Gate, all_frames: bool = False):
    """The p95 interval of `after` over `before`; with `all_frames`, as if no frame had been counted preempted."""
    if all_frames:
        before, after = (replace(m, latency_ms=replace(m.latency_ms, preempted=())) for m in (before, after))
    change = baseline.latency_change(before, after)
    return change.p95, change.p95.low > 1 + gate.max_slowdown / 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--slowed", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200, help="timed frames per check (edgetl check's default)")
    ap.add_argument("--slowed-size", type=int, default=64, help="input size of the slower bundle (px)")
    args = ap.parse_args()
    gate = baseline.Gate()
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        root = Path(tmp)
        data = _data(root)
        fast, slow = _bundle(root, data, 32), _bundle(root, data, args.slowed_size)
        (root / "bench.toml").write_text(f'name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n'
                                         f'[local]\nworkdir = "{root / "board"}"\n{LOOSE}')
        device = devices.load(root / "bench.toml")
        plan = Plan(runs=args.runs)
        manifests = {b: manifest_of(b) for b in (fast, slow)}

        def measured(bundle: Path):
            return check_one(bundle, device, plan, manifests[bundle]).measured

        same, slowed = [], []
        for _ in range(args.pairs):
            same.append((measured(fast), measured(fast)))
        for _ in range(args.slowed):
            slowed.append((measured(fast), measured(slow)))
        judged = {k: [_judge(a, b, gate, k == "all") for a, b in same] for k in ("own", "all")}
        caught = {k: [_judge(a, b, gate, k == "all") for a, b in slowed] for k in ("own", "all")}
        preempted = [sum(1 for p in m.latency_ms.preempted if p) / m.latency_ms.runs for pair in same for m in pair]
        emit({"benchmark": "baseline_noise", "runs_per_check": args.runs, "max_slowdown_pct": gate.max_slowdown,
              "same_bundle_pairs": args.pairs,
              "false_alarms": sum(bad for _, bad in judged["own"]),
              "false_alarms_all_frames": sum(bad for _, bad in judged["all"]),
              "largest_low_same": max(iv.low for iv, _ in judged["own"]),
              "slowed_size_px": args.slowed_size, "slowed_pairs": args.slowed,
              "slowed_caught": sum(bad for _, bad in caught["own"]),
              "slowed_caught_all_frames": sum(bad for _, bad in caught["all"]),
              "slowed_p95_intervals": [[iv.ratio, iv.low, iv.high] for iv, _ in caught["own"]],
              "preempted_share_median": sorted(preempted)[len(preempted) // 2]})


if __name__ == "__main__":
    main()
