"""The options that ``predict`` (local and Ray) and ``evaluate`` share, in one validated object,
as :class:`augkit.training.config.TrainConfig` is for ``train``: a new inference option is one
field here, read by the engines, instead of a parameter re-spelled in every function.

Cheap to import (no torch): the commands build it before the library loads a model, so a bad
value is an exit-2 error before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from augkit.errors import UsageError
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.recipe.views import MERGE_MODES

if TYPE_CHECKING:
    from augkit.recipe.api import TTASpec

#: ``--tta`` values that turn TTA off (the plain view only), whatever the run's recipe says.
NO_TTA = ("none", "identity")
#: Where a TTA came from, as the commands' headers say it (:func:`augkit.infer.engine.choose_tta`).
SOURCE_OPTION, SOURCE_PLAIN = "--tta", "plain: the run's recipe has no tta section"


@dataclass
class InferOptions:
    """How to run inference. ``tta``: a ``--tta`` string (preset, built-in recipe, recipe file;
    ``none``/``identity``: the plain view), a resolved :class:`~augkit.recipe.api.TTASpec`, or None:
    **the run's own TTA** (its recipe's ``tta`` section; an exported ``.onnx``: the views it was
    exported with; else plain). ``merge``/``beta`` override the chosen TTA's. ``workers``: decoding
    processes (None: :func:`augkit.infer.engine.default_workers`), or with ``engine="ray"`` the
    actors in the pool (None/0: the cluster's CPUs). ``address``/``num_cpus``: the Ray engine's."""

    tta: TTASpec | str | None = None
    merge: str | None = None
    beta: float | None = None
    top_k: int = 1
    batch_size: int = 64
    device: str = "cpu"
    workers: int | None = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    engine: str = "local"
    address: str | None = None
    num_cpus: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every value in range, or a :class:`UsageError` naming the option and what is allowed."""
        if self.merge is not None and self.merge not in MERGE_MODES:
            raise UsageError(f"--merge {self.merge!r} is not a merge mode (allowed: {', '.join(MERGE_MODES)})")
        if self.beta is not None and not (_is_number(self.beta) and 0.0 <= self.beta <= 1.0):
            raise UsageError(f"--beta {self.beta!r} is out of range (allowed: 0 to 1)")
        for name, lo in (("top_k", 1), ("batch_size", 1), ("workers", 0), ("max_pixels", 1)):
            value = getattr(self, name)
            if value is None and name in ("workers", "max_pixels"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise UsageError(f"--{name.replace('_', '-')} {value!r}: must be an integer >= {lo}")
        if not isinstance(self.device, str) or not self.device:
            raise UsageError(f"--device {self.device!r}: give auto, cpu, cuda, cuda:N or mps")
        if self.num_cpus is not None and not (_is_number(self.num_cpus) and self.num_cpus > 0):
            raise UsageError(f"--num-cpus {self.num_cpus!r}: must be a number > 0")
        if self.address is not None and self.engine != "ray":
            raise UsageError("--address needs --engine ray")
        if isinstance(self.tta, str) and not self.tta.strip():
            raise UsageError("--tta '': give a preset, a recipe, or none")

    @classmethod
    def of(cls, options: InferOptions | None = None, **fields_: Any) -> InferOptions:
        """``options`` with ``fields_`` replaced (validated again); a new object from the fields
        alone when ``options`` is None. Unknown names are refused, naming the allowed ones."""
        unknown = sorted(set(fields_) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown inference option(s) {', '.join(unknown)} (allowed: {', '.join(field_names())})")
        return replace(options, **fields_) if options is not None else cls(**fields_)

    @property
    def tta_off(self) -> bool:
        """``--tta none`` or ``--tta identity``: the plain view, whatever the run's recipe says."""
        return isinstance(self.tta, str) and self.tta.strip() in NO_TTA


def field_names() -> list[str]:
    return [f.name for f in fields(InferOptions)]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


@dataclass
class Hooks:
    """What the library reports while it runs (the CLI draws it; the library never prints).
    ``on_start(n)``: the number of inputs; ``progress(k)``: k more done; ``on_tta(spec, source)``:
    the TTA chosen and where it came from (for the command's header)."""

    on_start: Callable[[int], None] | None = None
    progress: Callable[[int], None] | None = None
    on_tta: Callable[[TTASpec, str], None] | None = None

    def start(self, n: int) -> None:
        if self.on_start is not None:
            self.on_start(n)

    def tta(self, spec: TTASpec, source: str) -> None:
        if self.on_tta is not None:
            self.on_tta(spec, source)


def tta_label(spec: TTASpec) -> str:
    """A short name for a TTA: its preset, else its views."""
    if spec.preset:
        return spec.preset
    return "+".join(v.name for v in spec.views)


def describe_tta(spec: TTASpec, source: str) -> str:
    """One header line: ``TTA flip (2 views, merge mean) from the run's recipe 'digits'``."""
    n = len(spec.views)
    plain = n == 1 and spec.views[0].is_identity and not spec.beta
    what = (
        "TTA none (the plain view)"
        if plain
        else f"TTA {tta_label(spec)} ({n} view{'s' * (n != 1)}, merge {spec.merge}"
        + (f", beta {spec.beta:g}" if spec.beta else "")
        + ")"
    )
    if source == SOURCE_OPTION:
        return f"{what}, from --tta"
    hint = "" if plain else "; --tta none turns it off"
    return f"{what}: {source}{hint}"
