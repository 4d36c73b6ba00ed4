"""`edgetl export` of a text run: the encoder (token ids -> mean-pooled embedding) at a fixed length, the
head as `head.npz`, and the combined model (ids -> logits), checked against PyTorch on the run's own
sentences before anything is written.

The artifacts take one tensor, the ids (1, max_len), and make the attention mask in the graph from
the padding id, so the device feeds the tokenizer's output straight in. ONNX takes int64 ids;
TFLite (litert-torch) takes int32, what LiteRT's embedding lookup reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from edgetl.console import QUIET, Console, silenced
from edgetl.errors import ConfigError, EdgetlError, ParityError
from edgetl.export.onnx import OPSET
from edgetl.fsutil import EXPORT, claim, staged_dir
from edgetl.rundir import HEAD, ExportDir, ExportFiles, ExportRecord, InputInfo
from edgetl.runtime import engines
from edgetl.runtime.tokens import MAX_LEN, TextSpec
from edgetl.train.text import TextRun, load_text_run, versions

DTYPE = {"onnx": "int64", "tflite": "int32"}
PARITY_TEXTS = 64
STATISTICS_TEXTS = 512


class Classifier(torch.nn.Module):
    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, ids):
        return self.head(self.encoder(ids))


def check_max_len(max_len: int | None, run: TextRun) -> int:
    if max_len is None:
        return run.spec.max_len
    limit = min(MAX_LEN, int(getattr(run.encoder.encoder.config, "max_position_embeddings", MAX_LEN)))
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 4 <= max_len <= limit:
        raise ConfigError(f"--max-len must be between 4 and {limit} tokens (the encoder's positions), not {max_len}",
                          f"e.g. --max-len {run.spec.max_len} (the run's)")
    return max_len


def write(module: torch.nn.Module, sample: np.ndarray, path: Path, fmt: str, *, output_name: str) -> None:
    """`module` (ids -> output) as `fmt`, traced on `sample`, one real sentence's ids (1, max_len)."""
    sample = torch.from_numpy(sample.astype(np.int64 if fmt == "onnx" else np.int32))
    module.eval()
    if fmt == "tflite":
        from edgetl.export.tflite import to_tflite

        to_tflite(module, sample, path)
        return
    from edgetl.errors import converting

    with silenced(), torch.no_grad(), converting("ONNX export (torch.onnx)", "this encoder does not export to ONNX "
                                                 "with this torch; report the model and versions"):
        program = torch.onnx.export(module, (sample,), dynamo=True, opset_version=OPSET, input_names=["input_ids"],
                                    output_names=[output_name], external_data=False, verbose=False)
        program.save(str(path))


def texts_of(run: TextRun, n: int) -> list[str]:
    """Up to `n` of the run's val sentences (train where val is gone), class-balanced by a seeded pick."""
    from edgetl.data.text import stratified

    for split in ("val", "train"):
        try:
            data = run.split(split)
        except (EdgetlError, OSError):  # the files may be gone: try the next split
            continue
        if len(data):
            per = max(1, -(-n // len(run.classes)))
            return list(stratified(data, per, total=n).texts)
    raise ConfigError(f"the sentences {run.path} was trained on cannot be read any more",
                      "restore the run's data files (finetune.json names them)")


@torch.no_grad()
def parity(backbone_file: Path, model_file: Path, run: TextRun, spec: TextSpec, texts: list[str],
           tolerance: float) -> dict:
    ids = run.tokenizer(spec).ids(texts)
    ref = run.encoder(torch.from_numpy(ids.astype(np.int64))).numpy()
    ref_class = run.head(torch.from_numpy(ref)).argmax(1).numpy()
    with silenced():
        with engines.load(backbone_file) as engine:
            emb = engine.run(ids)
        with engines.load(model_file) as engine:
            logits = engine.run(ids)
    W, b = run.head.weight.numpy(), run.head.bias.numpy()
    rel = float(np.abs(emb - ref).max()) / max(float(np.abs(ref).max()), 1e-12)
    result = {"texts": len(texts), "max_abs_diff": float(np.abs(emb - ref).max()), "rel_diff": rel,
              "top1_agreement": float(((emb @ W.T + b).argmax(1) == ref_class).mean()),
              "model_top1_agreement": float((logits.argmax(1) == ref_class).mean()),
              "tolerance": tolerance, "min_agreement": 0.99}
    result["ok"] = rel <= tolerance and min(result["top1_agreement"], result["model_top1_agreement"]) >= 0.99
    return result


def export_text(run_path: str | Path, fmt: str, *, tolerance: float = 1e-3, max_len: int | None = None,
                console: Console = QUIET) -> tuple[Path, TextSpec, ExportRecord]:
    """Export and parity-check a text run in `fmt` into RUN/export/FORMAT (replaced as a whole)."""
    run = load_text_run(run_path)
    spec = run.spec.with_max_len(check_max_len(max_len, run)).with_dtype(DTYPE[fmt])
    out = claim(run.dir.export_dir(fmt).path, EXPORT, flag="the export dir")
    texts = texts_of(run, PARITY_TEXTS)
    t0 = time.perf_counter()
    with staged_dir(out, EXPORT) as tmp:
        backbone_file, model_file = (tmp / name for name in ExportDir.names(fmt))
        sample = run.tokenizer(spec).ids(texts[:1])
        with console.task(f"exporting {run.record.backbone} to {fmt} at {spec.max_len} tokens", 3, "steps") as advance:
            write(run.encoder, sample, backbone_file, fmt, output_name="sentence_embedding")
            advance(1)
            write(Classifier(run.encoder, run.head), sample, model_file, fmt, output_name="logits")
            advance(1)
            result = parity(backbone_file, model_file, run, spec, texts, tolerance)
            advance(1)
        if not result["ok"]:
            raise ParityError(f"the {fmt} export of {run.path} does not match PyTorch: embeddings differ by "
                              f"{result['rel_diff']:.2%} of their range (allowed {tolerance:.2%}), top-1 agrees on "
                              f"{result['top1_agreement']:.1%}", "the export is not written; report the model and "
                                                                 "versions")
        write_statistics(run, spec, tmp / "features.npz")
        record = ExportRecord(
            format=fmt, backbone=run.record.backbone, run=str(run.path),
            files=ExportFiles(backbone=backbone_file.name, model=model_file.name, head=HEAD),
            input=InputInfo(shape=(1, spec.max_len), layout="NL", dtype=spec.dtype),
            embedding_dim=int(run.head.in_features), classes=len(run.classes),
            sizes_bytes={"backbone": backbone_file.stat().st_size, "model": model_file.stat().st_size},
            parity=result, seconds=round(time.perf_counter() - t0, 2), versions=versions(),
        )
        ExportDir.fill(tmp, run.dir, spec, record, tmp / "features.npz")
    console.log(f"{fmt}: parity on {result['texts']} of the run's sentences: max |diff| {result['max_abs_diff']:.2e}, "
                f"top-1 agreement {result['top1_agreement']:.1%} -> {out}")
    return out, spec, record


@torch.no_grad()
def write_statistics(run: TextRun, spec: TextSpec, path: Path) -> None:
    """Mean/std of the embedding on the run's training sentences: what the device standardises its head with."""
    from edgetl.data.text import stratified
    from edgetl.train.text import embed

    try:
        data = run.split("train")
    except (EdgetlError, OSError):  # no statistics without the data; the device then uses its own
        return
    data = stratified(data, max(1, STATISTICS_TEXTS // len(run.classes)))
    out = embed(run.encoder, run.tokenizer(spec).ids(list(data.texts))).numpy()
    np.savez(path, mean=out.mean(0).astype(np.float32), std=out.std(0).astype(np.float32))
