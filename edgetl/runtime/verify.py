"""Reading a bundle and proving it is the one that was built, before anything runs from it.

A bundle is a directory (or a .tar.gz of one) holding `manifest.json`, every file it lists
with its sha256, and optionally `manifest.json.sig`, an ed25519 signature of the manifest's
bytes. A signed manifest names its `signer` (the raw ed25519 public key, base64, and its id).
`open_bundle` refuses: an unknown schema, a listed file missing, a file not listed, a hash that
does not match, a bad or missing signature when a key is given, a signature that does not match
the key the manifest names, an archive member that would land outside the bundle, and a bundle
built for another CPU architecture. Only a key given (`key`, $EDGETL_BUNDLE_KEY) is trusted: the
embedded key proves the bundle unchanged since someone signed it, never who.
Standard library only (plus `cryptography`, lazily, for signed bundles): this runs on the device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import platform
import shutil
import tarfile
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgetl.errors import BundleError
from edgetl.runtime.manifest import MANIFEST, SIGNATURE, Manifest
from edgetl.runtime.records import RecordError

SCHEMA_VERSIONS = Manifest.SCHEMA_VERSIONS
NOT_LISTED = {MANIFEST, SIGNATURE}  # the manifest cannot hash itself; the signature signs it
KEY_VARIABLE = "EDGETL_BUNDLE_KEY"  # the device's trusted public key file


@dataclass(frozen=True)
class Bundle:
    path: Path  # the bundle dir (an archive is unpacked next to nothing: into a temp dir the caller owns)
    manifest: Manifest
    signed: bool
    signature_checked: bool  # against a key the caller trusts (`key`): only this makes a signed bundle runnable
    signer: str | None = None  # the id of the key the manifest names (None: unsigned, or signed by an older edgetl)
    signer_checked: bool = False  # the signature matches that embedded key: unchanged since signing, by whoever

    @property
    def model(self) -> Path:
        return self.path / self.manifest.model

    @property
    def target(self) -> str:
        return self.manifest.target

    def checkset(self):
        """(uint8 NHWC pixels, labels) of the bundle's checkset: the labelled images it carries; a text
        bundle's: (its sentences, labels)."""
        import numpy as np

        from edgetl.errors import EdgetlError

        entry = self.manifest.checkset
        if not entry:
            raise EdgetlError("this bundle has no checkset", "pass --data DIR with labelled images on the device")
        with np.load(self.path / entry.file, allow_pickle=False) as f:
            if "texts" in f.files:
                return [str(s) for s in f["texts"]], [str(s) for s in f["labels"]]
            return f["pixels"], [str(s) for s in f["labels"]]

    def feature_statistics(self):
        """(mean, std) of the backbone's outputs on the server's training images (features.npz), or None
        for a bundle made before edgetl recorded them."""
        import numpy as np

        name = self.manifest.features
        if not name:
            return None
        with np.load(self.path / name, allow_pickle=False) as f:
            return np.asarray(f["mean"], np.float32), np.asarray(f["std"], np.float32)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safe_name(name: str) -> bool:
    """A relative path that stays inside the bundle."""
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def key_id(raw: bytes) -> str:
    """A short fingerprint of a raw ed25519 public key, as `edgetl bundle verify` prints it."""
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise BundleError("checking a bundle signature needs the cryptography package",
                          "pip install 'edgetl[runtime-sign]'") from None
    return serialization, Ed25519PublicKey


def _can_check() -> bool:
    try:
        _crypto()
    except BundleError:
        return False
    return True


def _public_key(key: Path):
    serialization, Ed25519PublicKey = _crypto()
    try:
        data = Path(key).read_bytes()
    except OSError as exc:
        named = f"${KEY_VARIABLE}" if os.environ.get(KEY_VARIABLE) == str(key) else "--key (key=)"
        raise BundleError(f"cannot read the public key {key} named by {named}: {exc.strerror or exc}",
                          f"point --key or ${KEY_VARIABLE} at the .pub file written by `edgetl bundle keygen`"
                          ) from None
    try:
        loaded = (serialization.load_ssh_public_key(data) if data.startswith(b"ssh-")
                  else serialization.load_pem_public_key(data))
    except (ValueError, TypeError):
        raise BundleError(f"{key} is not a PEM or OpenSSH public key", "pass the .pub file written with the "
                          "signing key (edgetl bundle keygen)") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise BundleError(f"{key} is not an ed25519 key", "bundles are signed with ed25519")
    return loaded


def public_key_id(key: Path) -> str:
    """The id of the public key in file `key`, as a signed manifest names its signer."""
    return key_id(raw_public_key(_public_key(key)))


def raw_public_key(public) -> bytes:
    """The 32 bytes of an ed25519 public key object."""
    serialization, _ = _crypto()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def embedded_signer(manifest: Manifest, where: Path) -> tuple[bytes, str] | None:
    """(raw key, id) of the `signer` the manifest names; None when it names none (unsigned, or older)."""
    entry = manifest.signer
    if entry is None:
        return None
    try:
        raw = base64.b64decode(entry.key, validate=True)
    except (TypeError, binascii.Error):
        raw = b""
    if len(raw) != 32 or entry.id != key_id(raw):
        raise BundleError(f"{where}: the manifest's signer is not an ed25519 key and its id",
                          "the manifest was edited by hand or damaged; compile and sign it again")
    return raw, entry.id


def verify_signature(manifest_bytes: bytes, signature: bytes, key: Path, embedded: str | None = None) -> None:
    """The signature checks with `key` (trusted); `embedded` is the id of the key the manifest names."""
    from cryptography.exceptions import InvalidSignature

    public = _public_key(key)
    given = key_id(raw_public_key(public))
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature:
        if embedded is not None and embedded != given:
            raise BundleError(f"the bundle's signature does not match this key: it is signed by {embedded}, "
                              f"and the key given ({key}) is {given}",
                              "pass the public key of the bundle's signer, or sign the bundle with yours") from None
        raise BundleError("the bundle's signature does not match its manifest and this key",
                          "the bundle was changed after signing, or signed with another key") from None
    if embedded is not None and embedded != given:  # signed by `key`, naming another signer: not what it says
        raise BundleError(f"the bundle's manifest names signer {embedded}, and it is signed by the key given "
                          f"({key}, {given})", "sign it again with edgetl compile --sign; do not run it")


def verify_embedded(manifest_bytes: bytes, signature: bytes, raw: bytes, where: Path) -> None:
    """The signature checks with the key the manifest names: the bundle is unchanged since it was signed."""
    from cryptography.exceptions import InvalidSignature

    _, Ed25519PublicKey = _crypto()
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{where}: the signature does not match the manifest and the key it names "
                          f"({key_id(raw)})", "the bundle was changed after signing; compile and sign it again"
                          ) from None


def _check_dir(root: Path, key: Path | None) -> Bundle:
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise BundleError(f"{root} has no {MANIFEST}", "not a bundle: write one with `edgetl compile RUN --target T`")
    raw = manifest_file.read_bytes()
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"{manifest_file} is not valid JSON", "the bundle is damaged; compile it again") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version not in SCHEMA_VERSIONS:
        raise BundleError(f"unknown bundle schema_version {version!r}",
                          f"this edgetl reads {', '.join(map(str, SCHEMA_VERSIONS))}; upgrade edgetl on the device")
    files = manifest.get("files")
    bad = [n for n in files if not safe_name(n)] if isinstance(files, dict) else []
    if bad:  # named as what it is before anything else is read
        raise BundleError(f"the manifest lists a path outside the bundle: {bad[0]!r}", "do not run this bundle")
    try:
        manifest = Manifest.from_dict(manifest, str(manifest_file))
    except RecordError as exc:
        raise BundleError(f"{exc}", "the bundle is damaged or was edited by hand; compile it again") from None
    listed = manifest.files
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    links = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
    parents = {q.as_posix() for n in present for q in PurePosixPath(n).parents}
    empty = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_dir() and not p.is_symlink() and p.relative_to(root).as_posix() not in parents)
    if empty:
        raise BundleError(f"{root}: directory not in the manifest: {empty[0]}",
                          "something was added to the bundle after it was built; remove it or compile again")
    if links:
        raise BundleError(f"{root} holds a symlink: {links[0]}", "a bundle holds plain files only")
    missing = sorted(set(listed) - present)
    if missing:
        raise BundleError(f"{root}: listed file missing: {', '.join(missing)}", "copy the whole bundle again")
    extra = sorted(present - set(listed) - NOT_LISTED)
    if extra:
        raise BundleError(f"{root}: file not in the manifest: {', '.join(extra)}",
                          "something was added to the bundle after it was built; remove it or compile again")
    for name, entry in sorted(listed.items()):
        if sha256(root / name) != entry.sha256:
            raise BundleError(f"{root}: {name} does not match its sha256 in the manifest",
                              "the file was changed or damaged in transfer; copy the bundle again")
    signed = (root / SIGNATURE).is_file()
    signer = embedded_signer(manifest, root)
    if signer and not signed:
        raise BundleError(f"{root}: the manifest names signer {signer[1]}, and {SIGNATURE} is missing",
                          "the signature was removed or lost in transfer; copy the signed bundle again")
    signer_checked = False
    if key is not None:
        if not signed:
            raise BundleError(f"{root} is not signed, and a key was given", "sign it: edgetl compile ... --sign KEY")
        verify_signature(raw, (root / SIGNATURE).read_bytes(), key, signer[1] if signer else None)
        signer_checked = signer is not None
    elif signer and _can_check():  # without cryptography a device still refuses it for want of a key (Model.load)
        verify_embedded(raw, (root / SIGNATURE).read_bytes(), signer[0], root)
        signer_checked = True
    return Bundle(root, manifest, signed, key is not None, signer[1] if signer else None, signer_checked)


def check_machine(bundle: Bundle, machine: str | None = None) -> None:
    machine = machine or platform.machine()
    arches = bundle.manifest.arch
    if machine not in arches:
        raise BundleError(f"this bundle is for {bundle.target} ({', '.join(arches)}), and this machine is {machine}",
                          "compile the run for this machine's target, e.g. --target host-cpu")


def _unpack(archive: Path, into: Path) -> Path:
    """Extract a bundle archive member by member, refusing anything that would escape `into`."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                if not safe_name(m.name):
                    raise BundleError(f"{archive}: member {m.name!r} would land outside the bundle",
                                      "do not unpack or run this archive")
                if not (m.isfile() or m.isdir()):
                    raise BundleError(f"{archive}: member {m.name!r} is a link or device, not a file",
                                      "a bundle archive holds plain files only")
            tops = {PurePosixPath(m.name).parts[0] for m in members}
            if len(tops) != 1:
                raise BundleError(f"{archive}: expected one top-level bundle dir, found {len(tops)}",
                                  "make archives with `edgetl compile --out DIR`")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # checked above as well
            tar.extractall(into, members=members, **safe)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{archive} is not a readable .tar.gz ({type(exc).__name__})",
                          "copy the archive again") from None
    return into / tops.pop()


def open_bundle(path: str | Path, *, key: str | Path | None = None, machine: str | None = None,
                unpack_to: Path | None = None) -> Bundle:
    """A verified bundle from a dir or .tar.gz; `machine` checks it is for this CPU ("any" skips).
    An archive is unpacked into `unpack_to`; without one, into a temp dir that goes when the
    returned `Bundle` does (nothing is left in /tmp by a caller that forgets it)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist", "pass a bundle dir or its .tar.gz")
    key = Path(key) if key is not None else None
    if key is not None:
        _public_key(key)  # a trusted key that cannot be read is named before anything else

    def opened(root: Path) -> Bundle:
        bundle = _check_dir(root, key)
        if machine != "any":
            check_machine(bundle, machine)
        return bundle

    if path.is_dir():
        return opened(path)
    into = unpack_to or Path(tempfile.mkdtemp(prefix="edgetl-bundle-"))
    try:
        bundle = opened(_unpack(path, into))
    except BaseException:
        if unpack_to is None:
            shutil.rmtree(into, ignore_errors=True)
        raise
    if unpack_to is None:
        weakref.finalize(bundle, shutil.rmtree, into, ignore_errors=True)
    return bundle
