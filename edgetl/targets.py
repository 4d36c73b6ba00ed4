"""Hardware targets as data: one TOML file per board in `targets/`, parsed into a frozen `Target`.

A target names the CPU architecture, the engines to try in order, the precisions and IO type
the hardware accepts, its op constraints and default budgets (a device file may override
them). A new board is a new file, not new code. Any bad file is an error naming the file,
the key and the values allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgetl import tomlfiles
from edgetl.errors import ConfigError
from edgetl.tomlfiles import bad as _bad

ARCHES = ("x86_64", "aarch64", "armv7l")
ENGINES = ("onnxruntime", "litert", "edgetpu", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
# What edgetl can ship to each engine: onnxruntime and LiteRT run the fp32 export or the int8
# quantize result (edgetl makes no fp16 ONNX/TFLite model), the Edge TPU int8 only.
ENGINE_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "litert": ("fp32", "int8"), "edgetpu": ("int8",),
                     "tensorrt": ("fp32", "fp16", "int8")}
IO_DTYPES = ("float32", "int8", "uint8")
BUDGET_KEYS = {"latency_p95_ms": float, "min_top1": float, "max_rss_mb": float}
CONSTRAINT_KEYS = {"full_integer": bool, "static_shapes": bool, "max_rank": int, "max_tensor_mb": float}
KEYS = {"name", "description", "arch", "engines", "precisions", "io_dtype", "constraints", "budgets", "reference"}
# Where target files are looked for, after an explicit path: $EDGETL_TARGETS, ./targets, the ones shipped.
SHIPPED = Path(__file__).resolve().parent.parent / "targets"


@dataclass(frozen=True)
class Budgets:
    """What a device must meet: p95 latency of one inference, top-1 on the checkset, peak memory."""

    latency_p95_ms: float
    min_top1: float
    max_rss_mb: float

    def merged(self, overrides: dict) -> Budgets:
        """These budgets with a device file's overrides applied (same keys, same checks)."""
        return Budgets(**{**self.__dict__, **_budgets(overrides, "device budgets", partial=True)})


@dataclass(frozen=True)
class Constraints:
    """What the hardware's compiler or kernels refuse: float ops, dynamic shapes, high-rank or huge tensors."""

    full_integer: bool = False
    static_shapes: bool = True
    max_rank: int | None = None
    max_tensor_mb: float | None = None


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: tuple[str, ...]  # CPU architectures the target's host can be (a USB accelerator has several)
    engines: tuple[str, ...]
    precisions: tuple[str, ...]
    io_dtype: str
    constraints: Constraints
    budgets: Budgets
    file: Path
    reference: dict = field(default_factory=dict)  # published figures the budgets were set from

    @property
    def engine(self) -> str:
        return self.engines[0]


def _budgets(raw: dict, where, *, partial: bool = False) -> dict:
    out = {}
    for key, value in raw.items():
        if key not in BUDGET_KEYS:
            raise _bad(where, f"budgets.{key}", value, sorted(BUDGET_KEYS))
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _bad(where, f"budgets.{key}", value, "a number >= 0")
        out[key] = float(value)
    missing = set(BUDGET_KEYS) - set(out)
    if missing and not partial:
        raise ConfigError(f"{where}: [budgets] lacks {', '.join(sorted(missing))}",
                          f"a target sets all of: {', '.join(BUDGET_KEYS)}")
    return out


def _choices(file: Path, key: str, value, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = value if isinstance(value, list) else None
    if not items or any(v not in allowed for v in items) or len(set(items)) != len(items):
        raise _bad(file, key, value, allowed)
    return tuple(items)


def parse(file: Path, raw: dict) -> Target:
    """A target from its TOML table; every key and value checked against what is allowed."""
    for key in raw:
        if key not in KEYS:
            raise _bad(file, key, raw[key], sorted(KEYS))
    for key in ("name", "arch", "engines", "precisions", "io_dtype", "budgets"):
        if key not in raw:
            raise ConfigError(f"{file}: missing key {key!r}", f"a target sets: {', '.join(sorted(KEYS))}")
    if raw["name"] != file.stem:
        raise _bad(file, "name", raw["name"], f"the file's own name, {file.stem!r}")
    arch = _choices(file, "arch", [raw["arch"]] if isinstance(raw["arch"], str) else raw["arch"], ARCHES)
    if raw["io_dtype"] not in IO_DTYPES:
        raise _bad(file, "io_dtype", raw["io_dtype"], IO_DTYPES)
    constraints = raw.get("constraints", {})
    for key, value in constraints.items():
        kind = CONSTRAINT_KEYS.get(key)
        if kind is None:
            raise _bad(file, f"constraints.{key}", value, sorted(CONSTRAINT_KEYS))
        wanted = int | float if kind is float else kind
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, wanted):
            raise _bad(file, f"constraints.{key}", value, f"a {kind.__name__}")
    if not isinstance(raw["budgets"], dict):
        raise _bad(file, "budgets", raw["budgets"], "a [budgets] table")
    engines = _choices(file, "engines", raw["engines"], ENGINES)
    precisions = _choices(file, "precisions", raw["precisions"], PRECISIONS)
    for engine in engines:  # each engine listed must be able to run one of the precisions
        runs = ENGINE_PRECISIONS[engine]
        if not set(precisions) & set(runs):
            raise ConfigError(f"{file}: precisions = {list(precisions)} has none that engine {engine!r} runs",
                              f"{engine} runs {', '.join(runs)} models here; add one of them to `precisions`, "
                              f"or drop {engine!r} from `engines`")
    return Target(
        name=raw["name"], description=str(raw.get("description", "")), arch=arch,
        engines=engines, precisions=precisions, io_dtype=raw["io_dtype"],
        constraints=Constraints(**constraints), budgets=Budgets(**_budgets(raw["budgets"], file)), file=file,
        reference=dict(raw.get("reference", {})))


def read(file: Path) -> Target:
    return parse(Path(file), tomlfiles.read(file, "targets/rpi4.toml"))


def search_path() -> list[Path]:
    return tomlfiles.search_path("EDGETL_TARGETS", "targets", SHIPPED)


def names() -> list[str]:
    return tomlfiles.names(search_path())


def load(name: str | Path) -> Target:
    """A target by name (looked up in the search path) or by the path of its TOML file."""
    return read(tomlfiles.find(name, search_path(), "target"))


def all_targets() -> list[Target]:
    return [load(n) for n in names()]
