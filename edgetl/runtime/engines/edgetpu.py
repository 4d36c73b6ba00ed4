"""The Edge TPU: LiteRT with the libedgetpu delegate, which runs the compiled model's
edgetpu-custom-op on the TPU and leaves the ops after the split to the CPU."""

from __future__ import annotations

import platform
from pathlib import Path

from edgetl.errors import ConfigError
from edgetl.runtime.engines import missing_engine, table
from edgetl.runtime.engines.litert import LiteRTEngine

ROW = table.of_module(__name__)

# libedgetpu's name per OS, as pycoral loads it
DELEGATE = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def load_delegate(device: str | None = None):
    """The Edge TPU delegate (`device`: e.g. "usb", "pci", "usb:0"; default the first found)."""
    try:
        from ai_edge_litert.interpreter import load_delegate as load
    except ImportError:
        try:
            from tflite_runtime.interpreter import load_delegate as load
        except ImportError:
            raise missing_engine("LiteRT", ROW.extra) from None
    library = DELEGATE.get(platform.system(), DELEGATE["Linux"])
    try:
        return load(library, {"device": device} if device else {})
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot load the Edge TPU delegate {library} ({exc})".replace("\n", " "),
                          "install libedgetpu1-std from Coral's apt repository and plug the accelerator in") from None


class EdgeTPUEngine(LiteRTEngine):
    name = ROW.name

    def __init__(self, path: Path, *, threads: int | None = None, device: str | None = None):
        super().__init__(path, threads=threads, delegates=[load_delegate(device)])


ENGINE = EdgeTPUEngine
