#!/usr/bin/env bash
# An emulated Raspberry Pi 4 for the device tests: an arm64 Python 3.11 unpacked from Debian's
# arm64 packages into ROOT (no full rootfs, no chroot) with its pip (deploy installs the runtime
# with it, as on a board), numpy + onnxruntime + ai-edge-litert + Pillow (images for adapt)
# aarch64 wheels in ROOT/opt/site, and a Pi 4 /proc/cpuinfo (onnxruntime reads it, and the
# host's x86 one crashes it under qemu). Run with:
#   QEMU_CPU=cortex-a72 PYTHONPATH=ROOT/opt/site qemu-aarch64-static -L ROOT ROOT/usr/bin/python3
# Usage: tools/arm64-root.sh ROOT   (idempotent: a complete ROOT is left as it is)
set -euo pipefail
ROOT=${1:?usage: tools/arm64-root.sh ROOT}
PY=${PYTHON:-python3}
[ -f "$ROOT/.complete" ] && exit 0
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
command -v qemu-aarch64-static >/dev/null || {
  echo "installing qemu-user-static for the emulated device"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs"
: > "$tmp/status"
APT=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Dir::State::Lists="$tmp/lists"
     -o Dir::Cache="$tmp/cache" -o Dir::State::status="$tmp/status" -o Debug::NoLocking=1)
apt-get "${APT[@]}" update -qq
apt-get "${APT[@]}" install -y -qq --no-install-recommends --download-only python3.11 python3-pip libstdc++6 >/dev/null
rm -rf "$ROOT.partial" && mkdir -p "$ROOT.partial"
for deb in "$tmp"/cache/archives/*.deb; do dpkg -x "$deb" "$ROOT.partial"; done
ln -sf python3.11 "$ROOT.partial/usr/bin/python3"
mkdir -p "$ROOT.partial/proc"
cat > "$ROOT.partial/proc/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B Rev 1.4
CPU
WHEELS=(--only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux_2_28_aarch64
        --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)
# The wheels are kept beside ROOT, laid out as deploy --provision's wheel cache ($EDGETL_CACHE/wheels/ARCH-cpX.Y):
# its tests provision a bare board from them without going to PyPI.
KEEP="$(dirname "$ROOT")/wheels/aarch64-cp3.11"
rm -rf "$KEEP.partial" && mkdir -p "$KEEP.partial"
"$PY" -m pip download -q "${WHEELS[@]}" -d "$KEEP.partial" numpy onnxruntime ai-edge-litert pillow tokenizers
"$PY" -m pip install -q --no-warn-conflicts --no-index --find-links "$KEEP.partial" "${WHEELS[@]}" --target "$ROOT.partial/opt/site" \
  numpy onnxruntime ai-edge-litert pillow tokenizers
touch "$ROOT.partial/.complete"
rm -rf "$KEEP" && mv "$KEEP.partial" "$KEEP"
rm -rf "$ROOT" && mv "$ROOT.partial" "$ROOT"
