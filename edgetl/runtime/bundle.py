"""Reading a bundle and proving it is the one that was built, before anything runs from it.

A bundle is a directory (or a .tar.gz of one) holding `manifest.json`, every file it lists
with its sha256, and optionally `manifest.json.sig`, an ed25519 signature of the manifest's
bytes. `open_bundle` refuses: an unknown schema, a listed file missing, a file not listed,
a hash that does not match, a bad or missing signature when a key is given, an archive member
that would land outside the bundle, and a bundle built for another CPU architecture.
Standard library only (plus `cryptography`, lazily, for signed bundles): this runs on the device.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgetl.errors import EdgetlError

SCHEMA_VERSIONS = (1,)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
NOT_LISTED = {MANIFEST, SIGNATURE}  # the manifest cannot hash itself; the signature signs it


class BundleError(EdgetlError):
    """A bundle that must not be run: tampered, incomplete, unknown, or for another machine."""


@dataclass(frozen=True)
class Bundle:
    path: Path  # the bundle dir (an archive is unpacked next to nothing: into a temp dir the caller owns)
    manifest: dict
    signed: bool
    signature_checked: bool

    @property
    def model(self) -> Path:
        return self.path / self.manifest["model"]

    @property
    def target(self) -> str:
        return self.manifest["target"]


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


def _public_key(key: Path):
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise BundleError("checking a bundle signature needs the cryptography package",
                          "pip install 'edgetl[runtime-sign]'") from None
    data = Path(key).read_bytes()
    try:
        loaded = (serialization.load_ssh_public_key(data) if data.startswith(b"ssh-")
                  else serialization.load_pem_public_key(data))
    except ValueError:
        raise BundleError(f"{key} is not a PEM or OpenSSH public key", "pass the .pub file written with the "
                          "signing key (edgetl bundle keygen)") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise BundleError(f"{key} is not an ed25519 key", "bundles are signed with ed25519")
    return loaded


def verify_signature(manifest_bytes: bytes, signature: bytes, key: Path) -> None:
    from cryptography.exceptions import InvalidSignature

    try:
        _public_key(key).verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError("the bundle's signature does not match its manifest and this key",
                          "the bundle was changed after signing, or signed with another key") from None


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
    listed = manifest.get("files", {})
    bad = [n for n in listed if not safe_name(n)]
    if bad:
        raise BundleError(f"the manifest lists a path outside the bundle: {bad[0]!r}", "do not run this bundle")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    links = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
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
        if sha256(root / name) != entry.get("sha256"):
            raise BundleError(f"{root}: {name} does not match its sha256 in the manifest",
                              "the file was changed or damaged in transfer; copy the bundle again")
    signed = (root / SIGNATURE).is_file()
    if key is not None:
        if not signed:
            raise BundleError(f"{root} is not signed, and a key was given", "sign it: edgetl compile ... --sign KEY")
        verify_signature(raw, (root / SIGNATURE).read_bytes(), key)
    return Bundle(root, manifest, signed, key is not None)


def check_machine(bundle: Bundle, machine: str | None = None) -> None:
    machine = machine or platform.machine()
    arches = bundle.manifest.get("arch", [])
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
    An archive is unpacked into `unpack_to` (a temp dir when not given; the caller removes it)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist", "pass a bundle dir or its .tar.gz")
    key = Path(key) if key is not None else None
    if path.is_dir():
        bundle = _check_dir(path, key)
    else:
        into = unpack_to or Path(tempfile.mkdtemp(prefix="edgetl-bundle-"))
        try:
            bundle = _check_dir(_unpack(path, into), key)
        except BaseException:
            if unpack_to is None:
                shutil.rmtree(into, ignore_errors=True)
            raise
    if machine != "any":
        check_machine(bundle, machine)
    return bundle
