"""The program deploy runs on a device before edgetl's runtime is there: standard library only.

    python3 -c "$(this file)" status   WORK            what the device has (JSON)
    python3 -c "$(this file)" put      WORK STAMP SIZE SHA256 NAME   take the runtime wheel in on stdin
    python3 -c "$(this file)" activate WORK STAMP      swap the pip-installed runtime in

deploy sends this module's source over the device's transport (`python3 -c`), so it is the same
file that is linted and tested here. Each mode prints one JSON line; a refusal is a JSON
`{"error": {...}}` line and exit 2, as the runtime's device commands report theirs.
"""

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys


def refuse(message: str, hint: str) -> int:
    print(json.dumps({"error": {"kind": "DeviceRefused", "message": message, "hint": hint}}))
    return 2


def status(work: str) -> int:
    runtime = os.path.join(work, "runtime")
    stamp = os.path.basename(os.readlink(runtime))[len(".runtime-"):] if os.path.islink(runtime) else None
    print(json.dumps({"arch": platform.machine(), "python": platform.python_version(), "runtime": stamp,
                      "work": work, "pip": importlib.util.find_spec("pip") is not None}))
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


def activate(work: str, stamp: str) -> int:
    """The installed runtime becomes WORK/runtime by one rename of a symlink; older ones go."""
    staging = os.path.join(work, ".install-" + stamp)
    final = os.path.join(work, ".runtime-" + stamp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(os.path.join(staging, "site"), final)
    link = os.path.join(staging, "link")
    os.symlink(os.path.basename(final), link)
    os.replace(link, os.path.join(work, "runtime"))
    for name in os.listdir(work):
        if (name.startswith(".runtime-") and name != os.path.basename(final)) or name.startswith(".install-"):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    print(json.dumps({"runtime": stamp}))
    return 0


def main(argv: list[str], stdin=None) -> int:
    mode, work = argv[0], os.path.abspath(os.path.expanduser(argv[1]))
    if mode == "status":
        return status(work)
    if mode == "put":
        data = (stdin or sys.stdin.buffer).read()
        return put(work, argv[2], int(argv[3]), argv[4], argv[5], data)
    if mode == "activate":
        return activate(work, argv[2])
    return refuse(f"unknown bootstrap mode {mode!r}", "status, put or activate")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
