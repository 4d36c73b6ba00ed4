"""Hardware targets as data: one TOML file per board in `targets/`, parsed into a frozen `Target`.

A target names the CPU architecture, the engines to try in order, the precisions and IO type
the hardware accepts, its op constraints and default budgets (a device file may override
them). A new board is a new file, not new code. Any bad file is an error naming the file,
the key and the values allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator

from edgetl import config, tomlfiles
from edgetl.config import Choices, NonNegative
from edgetl.errors import ConfigError
from edgetl.runtime.engines import table as engine_table

ARCHES = ("x86_64", "aarch64", "armv7l")
ENGINES = engine_table.NAMES
PRECISIONS = ("fp32", "fp16", "int8")
# What edgetl can ship to each engine: onnxruntime and LiteRT run the fp32 export or the int8
# quantize result (edgetl makes no fp16 ONNX/TFLite model), the Edge TPU int8 only.
ENGINE_PRECISIONS = {r.name: r.precisions for r in engine_table.ENGINES}
IO_DTYPES = ("float32", "int8", "uint8")
# The values a target file may name, as the types its schema (the dataclasses below) is checked against
Arch = Literal[ARCHES]
Engine = Literal[tuple(ENGINES)]
Precision = Literal[PRECISIONS]
IoDtype = Literal[IO_DTYPES]
# Where target files are looked for, after an explicit path: $EDGETL_TARGETS, ./targets, the ones shipped.
SHIPPED = Path(__file__).resolve().parent.parent / "targets"


def _listed(value):
    """`arch = "aarch64"` is a list of one (as a tuple: what strict validation takes after this hook)."""
    return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Budgets:
    """What a device must meet: p95 latency of one inference, top-1 on the checkset, peak memory."""

    latency_p95_ms: NonNegative
    min_top1: NonNegative
    max_rss_mb: NonNegative

    def merged(self, overrides: dict, file: Path | str = "device budgets") -> Budgets:
        """These budgets with a device file's overrides applied (same keys, same checks)."""
        return config.parse(Budgets, {**self.__dict__, **overrides}, file, at="budgets")


@dataclass(frozen=True)
class Constraints:
    """What the hardware's compiler or kernels refuse: float ops, dynamic shapes, high-rank or huge tensors."""

    full_integer: bool = False
    static_shapes: bool = True
    max_rank: int | None = None
    max_tensor_mb: float | None = None


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    description: str = ""
    # CPU architectures the target's host can be (a USB accelerator has several)
    arch: Annotated[Choices[Arch], BeforeValidator(_listed)]
    engines: Choices[Engine]
    precisions: Choices[Precision]
    io_dtype: IoDtype
    constraints: Constraints = field(default_factory=Constraints)
    budgets: Budgets
    file: Path  # not a key of the file: the file itself
    reference: dict = field(default_factory=dict)  # published figures the budgets were set from

    @property
    def engine(self) -> str:
        return self.engines[0]


def parse(file: Path, raw: dict) -> Target:
    """A target from its TOML table; every key and value checked against what is allowed."""
    budgets, known = raw.get("budgets"), [f.name for f in fields(Budgets)]
    if isinstance(budgets, dict) and budgets.keys() <= set(known) and budgets.keys() != set(known):
        raise ConfigError(f"{file}: [budgets] lacks {', '.join(k for k in known if k not in budgets)}",  # all at once
                          f"a target sets all of: {', '.join(known)}")
    target = config.parse(Target, raw, file, given={"file": file})
    if target.name != file.stem:
        raise config.bad(file, "name", target.name, f"the file's own name, {file.stem!r}")
    for engine in target.engines:  # each engine listed must be able to run one of the precisions
        runs = ENGINE_PRECISIONS[engine]
        if not set(target.precisions) & set(runs):
            raise ConfigError(f"{file}: precisions = {list(target.precisions)} has none that engine {engine!r} runs",
                              f"{engine} runs {', '.join(runs)} models here; add one of them to `precisions`, "
                              f"or drop {engine!r} from `engines`")
    return target


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
