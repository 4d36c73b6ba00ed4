"""Writing a bundle: what a device needs to run a compiled model, each file hashed in a manifest,
optionally signed (ed25519), and packed into a reproducible .tar.gz (same inputs -> same bytes).

Reading and verifying live in `edgetl.runtime.verify`, because the device does them.
"""

from __future__ import annotations

import base64
import gzip
import os
import shutil
import tarfile
from dataclasses import asdict, replace
from pathlib import Path

from edgetl import __version__
from edgetl.backends import Artifacts, Source
from edgetl.checkset import FILE as CHECKSET
from edgetl.checkset import build as build_checkset
from edgetl.errors import ConfigError
from edgetl.fsutil import claim_bundle
from edgetl.rundir import FEATURES, FORMATS, HEAD
from edgetl.runtime.atomic import staged
from edgetl.runtime.engines import TensorSpec
from edgetl.runtime.manifest import Checkset, Compatibility, FileEntry, Manifest, Signer, SourceRun
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.runtime.tokens import TextSpec
from edgetl.runtime.verify import MANIFEST, SIGNATURE, key_id, raw_public_key, sha256
from edgetl.targets import Target

SCHEMA_VERSION = Manifest.SCHEMA_VERSIONS[0]  # what this edgetl writes


def tensor_specs(model: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a model file as the device sees them: name, shape, dtype, scale, zero_point."""
    if model.suffix == ".tflite":
        from edgetl.backends import tflite_graph

        graph = tflite_graph.read(model)

        def spec(t):
            return TensorSpec(t.name, tuple(t.shape), t.dtype, t.scale, t.zero_point)

        return tuple(spec(t) for t in graph.inputs), tuple(spec(t) for t in graph.outputs)
    import onnx
    from onnx import helper

    graph = onnx.load(str(model), load_external_data=False).graph

    def value(v):
        t = v.type.tensor_type
        return TensorSpec(v.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim),
                          helper.tensor_dtype_to_np_dtype(t.elem_type).name)

    return tuple(value(v) for v in graph.input), tuple(value(v) for v in graph.output)


def manifest(name: str, source: Source, target: Target, artifacts: Artifacts, files: dict[str, Path],
             checkset: Checkset | None = None, signer: Signer | None = None) -> Manifest:
    """The manifest of DESIGN.md: everything the device checks and needs, and nothing that varies
    between two builds of the same inputs (no timestamps, no paths of this machine: the run is
    named by its dir's name and the hash of its record). The preprocessing spec is the one of the
    artifact packed, as export and quantize wrote it. `signer` (see `signer_entry`) names the key
    a signed bundle is signed with."""
    inputs, outputs = tensor_specs(artifacts.model)
    run = source.run
    model_name = next(n for n, p in files.items() if p == artifacts.model)
    report = artifacts.report
    return Manifest(
        schema_version=SCHEMA_VERSION,
        name=name,
        target=target.name,
        arch=tuple(target.arch),
        engine=artifacts.engine,
        precision=artifacts.precision,
        created_by=f"edgetl {__version__}",
        source_run=SourceRun(name=run.path.resolve().name, id=run.record_id, backbone=run.record.backbone),
        labels=run.labels,
        preprocess=artifact_spec(source, artifacts, inputs[0]),
        model=model_name,
        inputs=inputs,
        outputs=outputs,
        head=HEAD,
        files={n: FileEntry(sha256=sha256(p), bytes=p.stat().st_size) for n, p in sorted(files.items())},
        budgets=asdict(target.budgets),
        checkset=checkset,
        accuracy=artifacts.accuracy,
        choice=artifacts.choice,
        deferred=artifacts.deferred,
        compatibility=Compatibility(summary=report.summary(), source=report.source,
                                    first_unmapped=report.first_unmapped.name if report.first_unmapped else None,
                                    cpu_ops=len(report.cpu_ops)),
        signer=signer,
        features=FEATURES if FEATURES in files else None,
    )


def artifact_spec(source: Source, artifacts: Artifacts, model_input: TensorSpec) -> PreprocessSpec | TextSpec:
    """The spec of the artifact packed: the one its stage wrote (export: the layout; quantize: the
    input scale and zero-point), with what compile itself changed: a backend that gave the model
    another integer input (uint8 for an Edge TPU) adds that input's type and quantization."""
    spec = source.spec(artifact_format(artifacts.model), artifacts.precision)
    if model_input.quantized:
        spec = spec.with_input(model_input.dtype, model_input.scale, model_input.zero_point)
    return spec


def artifact_format(model: Path) -> str:
    """The export format a backend's model file was made from (an Edge TPU model is a .tflite too)."""
    return next(fmt for fmt, suffix in FORMATS.items() if model.name.endswith(suffix))


def signer_entry(private) -> Signer:
    """What a signed manifest says of its signer: the raw ed25519 public key (base64) and its id.
    It lets anyone see that the bundle is unchanged since it was signed; only a key the device was
    given (`--key`, $EDGETL_BUNDLE_KEY) says by whom."""
    raw = raw_public_key(private.public_key())
    return Signer(key=base64.b64encode(raw).decode(), id=key_id(raw))


def _private_key(key: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(key).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {key} (--sign): {exc.strerror or exc}",
                          "pass the private key written by `edgetl bundle keygen KEY`") from None
    try:
        loaded = (serialization.load_ssh_private_key(data, None) if b"OPENSSH PRIVATE KEY" in data
                  else serialization.load_pem_private_key(data, None))
    except (ValueError, TypeError):
        raise ConfigError(f"{key} is not an unencrypted PEM or OpenSSH private key",
                          "make one with `edgetl bundle keygen KEY`") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{key} is not an ed25519 key", "bundles are signed with ed25519: edgetl bundle keygen KEY")
    return loaded


def keygen(path: Path) -> tuple[Path, Path]:
    """A new ed25519 key pair: PATH (private, PEM, mode 0600) and PATH.pub (public, PEM). A missing
    parent dir is made (the last one 0700: it holds a private key); an existing key is never replaced,
    and a pair is written whole or not at all."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path, pub = Path(path), Path(f"{path}.pub")
    if str(path).startswith("~") or path.name in ("", ".", ".."):
        raise ConfigError(f"{path} is not a key file name (a literal `~`, `.` or `..`)",
                          "give the full path of the key to create, e.g. keys/fleet")
    if path.exists() or pub.exists():
        raise ConfigError(f"{path} or {pub} already exists", "choose another name; keys are never overwritten")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{path.parent} is not a directory", "choose a key path inside a directory")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    written = []
    try:
        for file, data, mode in ((path, private, 0o600), (pub, public, 0o644)):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            written.append(file)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except FileExistsError:
        for file in written:
            file.unlink(missing_ok=True)
        raise ConfigError(f"{path} or {pub} already exists", "choose another name; keys are never overwritten"
                          ) from None
    except BaseException:
        for file in written:
            file.unlink(missing_ok=True)
        raise
    return path, pub


def archive(folder: Path, out: Path, name: str | None = None) -> Path:
    """`folder` as a .tar.gz at `out` whose bytes depend only on the files: sorted names, fixed owner,
    mode and time, gzip header without name or time. The caller stages `out` (see `write`)."""
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(f"{name or folder.name}/{path.relative_to(folder).as_posix()}")
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return out


def archive_path(out: Path) -> Path:
    return out.with_name(out.name + ".tar.gz")


def write(out: Path, source: Source, target: Target, artifacts: Artifacts, *, sign: Path | None = None,
          force: bool = False, checkset_per_class: int | None = None) -> Manifest:
    """The bundle dir at `out` and `out`.tar.gz, both replaced at once or left as they were (the caller has
    claimed them: `edgetl.compile`); returns the manifest. `checkset_per_class`: see `edgetl.checkset.build`."""
    model_name = f"backbone{artifacts.model.suffix}"
    if artifacts.model.name.endswith("_edgetpu.tflite"):
        model_name = "backbone_edgetpu.tflite"
    files = {model_name: artifacts.model, HEAD: source.head(artifact_format(artifacts.model), artifacts.precision),
             **artifacts.extra}
    statistics = source.statistics(artifact_format(artifacts.model), artifacts.precision)
    if statistics is not None:
        files[FEATURES] = statistics
    tokenizer = source.tokenizer(artifact_format(artifacts.model), artifacts.precision)
    if tokenizer is not None:  # a text bundle: the device tokenizes with the run's own tokenizer.json
        files[tokenizer.name] = tokenizer

    def record(tmp: Path, placed: dict[str, Path], signer: Signer | None) -> Manifest:
        checks = build_checkset(source.path, tmp / CHECKSET, per_class=checkset_per_class)  # what check scores
        if checks:
            placed[CHECKSET] = tmp / CHECKSET
        return manifest(out.name, source, target, replace(artifacts, model=tmp / model_name), placed, checks, signer)

    return write_bundle(Path(out), files, record, sign=sign, force=force)


def write_bundle(out: Path, files: dict[str, Path], record, *, sign: Path | None = None,
                 force: bool = False) -> Manifest:
    """Stage `files` (bundle name -> file) as the bundle dir `out`, let `record(tmp, placed, signer)` add
    what it writes there itself (into `placed`) and return the manifest, then write the manifest, its
    signature and `out`.tar.gz; all of it replaces what was there at once, or nothing does (the caller
    has claimed `out`: `edgetl.fsutil.claim_bundle`)."""
    signer = _private_key(sign) if sign is not None else None  # a bad key fails before anything is written
    out = Path(out)
    with staged(out, [archive_path(out)], recheck=lambda: claim_bundle(out, force=force)) as (tmp, (tmp_archive,)):
        for name, path in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp / name)
        placed = {name: tmp / name for name in files}
        manifest_record = record(tmp, placed, signer_entry(signer) if signer is not None else None)
        text = manifest_record.to_bytes()
        (tmp / MANIFEST).write_bytes(text)
        if signer is not None:
            (tmp / SIGNATURE).write_bytes(signer.sign(text))  # ed25519 is deterministic: still reproducible
        archive(tmp, tmp_archive, name=out.name)
    return manifest_record
