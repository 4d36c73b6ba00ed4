"""The program deploy runs on a device before edgetl's runtime is there: standard library only.

    python3 -c "$(this file)" status   WORK [DIST...]  what the device has (JSON), DISTs' versions too
    python3 -c "$(this file)" put      WORK STAMP SIZE SHA256 NAME   take the runtime wheel in on stdin
    python3 -c "$(this file)" activate WORK STAMP      swap the pip-installed runtime in
    python3 -c "$(this file)" wheels   WORK KEY SIZE SHA256   take a tar of wheels in on stdin (--provision)
    python3 -c "$(this file)" packages WORK KEY        swap the pip-installed packages in (WORK/packages)

deploy sends this module's source over the device's transport (`python3 -c`), so it is the same
file that is linted and tested here. Each mode prints one JSON line; a refusal is a JSON
`{"error": {...}}` line and exit 2, as the runtime's device commands report theirs.
"""

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import sys
import tarfile


def refuse(message: str, hint: str) -> int:
    print(json.dumps({"error": {"kind": "DeviceRefused", "message": message, "hint": hint}}))
    return 2


def _versions(path: list) -> dict:
    """{normalised distribution name: version} of what is installed on `path`, first found wins."""
    found = {}
    for dist in importlib.metadata.distributions(path=path):
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        found.setdefault(name, dist.version)
    return found


def status(work: str, dists: list = ()) -> int:
    """What deploy asks first: CPU, Python, glibc, the runtime build, pip, and the version of each of
    `dists` as the runtime will import them (WORK/packages first, as `deploy.RUNTIME` puts it)."""
    runtime = os.path.join(work, "runtime")
    stamp = os.path.basename(os.readlink(runtime))[len(".runtime-"):] if os.path.islink(runtime) else None
    packages = os.path.join(work, "packages")
    seen = _versions([packages, *sys.path])
    print(json.dumps({"arch": platform.machine(), "python": platform.python_version(), "runtime": stamp,
                      "work": work, "pip": importlib.util.find_spec("pip") is not None,
                      "libc": list(platform.libc_ver()), "packages": {d: seen.get(d) for d in dists},
                      "provisioned": _versions([packages]) if os.path.isdir(packages) else {}}))
    return 0


def put(work: str, stamp: str, size: int, sha: str, name: str, data: bytes) -> int:
    """The wheel, checked against its size and sha256, into a staging dir of its own."""
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        return refuse(f"the runtime wheel arrived damaged ({len(data)} of {size} bytes)", "deploy again")
    staging = os.path.join(work, ".install-" + stamp)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    with open(os.path.join(staging, name), "wb") as f:
        f.write(data)
    print(json.dumps({"wheel": os.path.join(staging, name), "site": os.path.join(staging, "site")}))
    return 0


def wheels(work: str, key: str, size: int, sha: str, data: bytes) -> int:
    """A tar of wheels, checked against its size and sha256, unpacked into a staging dir of its own."""
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        return refuse(f"the wheels arrived damaged ({len(data)} of {size} bytes)", "deploy --provision again")
    staging = os.path.join(work, ".provision-" + key)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "wheels"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            name = os.path.basename(member.name)
            if member.isfile() and name.endswith(".whl") and name == member.name:  # flat: no paths, no links
                with open(os.path.join(staging, "wheels", name), "wb") as f:
                    shutil.copyfileobj(tar.extractfile(member), f)
    print(json.dumps({"wheels": os.path.join(staging, "wheels"), "site": os.path.join(staging, "site")}))
    return 0


def swap(work: str, staging: str, final: str, link_name: str) -> None:
    """STAGING/site becomes WORK/FINAL, and WORK/LINK_NAME points at it by one rename of a symlink; the
    older versions and the staging dirs of that kind go."""
    kind = final.split("-", 1)[0] + "-"  # ".runtime-" or ".packages-"
    path = os.path.join(work, final)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(os.path.join(work, staging, "site"), path)
    link = os.path.join(work, staging, "link")
    os.symlink(final, link)
    os.replace(link, os.path.join(work, link_name))
    prefix = staging.split("-", 1)[0] + "-"
    for name in os.listdir(work):
        if (name.startswith(kind) and name != final) or name.startswith(prefix):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)


def activate(work: str, stamp: str) -> int:
    """The installed runtime becomes WORK/runtime by one rename of a symlink; older ones go."""
    swap(work, ".install-" + stamp, ".runtime-" + stamp, "runtime")
    print(json.dumps({"runtime": stamp}))
    return 0


def packages(work: str, key: str) -> int:
    """The provisioned packages become WORK/packages the same way."""
    swap(work, ".provision-" + key, ".packages-" + key, "packages")
    print(json.dumps({"packages": key}))
    return 0


def main(argv: list[str], stdin=None) -> int:
    mode, work = argv[0], os.path.abspath(os.path.expanduser(argv[1]))
    if mode == "status":
        return status(work, argv[2:])
    if mode == "put":
        data = (stdin or sys.stdin.buffer).read()
        return put(work, argv[2], int(argv[3]), argv[4], argv[5], data)
    if mode == "activate":
        return activate(work, argv[2])
    if mode == "wheels":
        return wheels(work, argv[2], int(argv[3]), argv[4], (stdin or sys.stdin.buffer).read())
    if mode == "packages":
        return packages(work, argv[2])
    return refuse(f"unknown bootstrap mode {mode!r}", "status, put, activate, wheels or packages")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
