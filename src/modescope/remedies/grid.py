"""The remedies a frontier measures, written as short specs, and what each does to a sampling run.

A spec names a remedy and, for those that have one, its strengths: `min_p=0.05,0.1,0.2` is three points of
the min-p remedy. The remedies:

- `direct`: plain sampling at temperature 1 with the prompt as given; the point every remedy moves away from;
- samplers, strength = their parameter: `temperature=T,..`, `min_p=P,..`, `top_n_sigma=N,..`, `xtc=PROB,..`
  (XTC's probability of excluding the top choices; its threshold is the probe's `xtc_threshold`);
- prompt strategies (no strength): `vary` (an instruction to vary), `few-shot` (varied examples first);
- `verbalized=K,..`: Verbalized Sampling, the model asked for K responses with their probabilities in one
  generation; each generation gives up to K texts, the parsed ones (the unparsed are counted);
- `guided=A,..`: base-guided decoding, sampling from the mixture of the model and a guide model (its base)
  with the guide's weight A in [0, 1] (geometric or arithmetic, the probe's `guide_mix`).

Every point samples at temperature 1 unless it is a temperature point, so each remedy is measured alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modescope.errors import ModescopeError

SAMPLERS = ("temperature", "min_p", "top_n_sigma", "xtc")
STRATEGY_REMEDIES = ("vary", "few-shot")
REMEDIES = ("direct", *SAMPLERS, *STRATEGY_REMEDIES, "verbalized", "guided")
# remedies that take strengths, and the default strengths of a spec that names none
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "temperature": (0.7, 1.3, 1.6),
    "min_p": (0.05, 0.1, 0.2),
    "top_n_sigma": (2.0, 1.0, 0.5),
    "xtc": (0.3, 0.6, 1.0),
    "verbalized": (5.0,),
    "guided": (0.25, 0.5, 0.75),
}
DEFAULT_GRID = ("direct", "temperature", "min_p", "top_n_sigma", "xtc", "vary", "few-shot", "verbalized")


@dataclass(frozen=True)
class RemedyPoint:
    """One point of the grid: a remedy at one strength (None for the remedies without one)."""

    remedy: str
    strength: float | None = None

    @property
    def label(self) -> str:
        return self.remedy if self.strength is None else f"{self.remedy}={self.strength:g}"

    @property
    def k(self) -> int:
        """The number of responses a Verbalized Sampling point asks for."""
        return int(self.strength or 0)


def _strength(remedy: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ModescopeError(f"remedy '{remedy}': strength '{text}' is not a number; write e.g. {remedy}=0.1") from None
    problem = _strength_problem(remedy, value)
    if problem:
        raise ModescopeError(f"remedy '{remedy}': {problem} (got {text})")
    return value


def _strength_problem(remedy: str, value: float) -> str | None:
    if not math.isfinite(value):
        return "the strength must be a finite number"
    if remedy == "guided" and not 0.0 <= value <= 1.0:
        return "the guide's weight α must lie in [0, 1]"
    if remedy == "min_p" and not 0.0 < value < 1.0:
        return "min_p must lie in (0, 1)"
    if remedy == "xtc" and not 0.0 < value <= 1.0:
        return "the XTC probability must lie in (0, 1]"
    if remedy in ("temperature", "top_n_sigma") and value <= 0:
        return f"{remedy} must be positive"
    if remedy == "verbalized" and (value != int(value) or not 2 <= value <= 20):
        return "the number of verbalized responses k is a whole number from 2 to 20"
    return None


def parse_remedy(spec: str) -> list[RemedyPoint]:
    """The points of one spec: `NAME` or `NAME=S1,S2,...` (see the module docstring)."""
    name, has_strengths, values = spec.strip().partition("=")
    name = name.strip()
    if name not in REMEDIES:
        raise ModescopeError(f"unknown remedy '{name}'; use one of {', '.join(REMEDIES)}")
    if name not in DEFAULT_STRENGTHS:
        if has_strengths:
            raise ModescopeError(f"remedy '{name}' takes no strength; write just '{name}'")
        return [RemedyPoint(name)]
    if not has_strengths:
        return [RemedyPoint(name, s) for s in DEFAULT_STRENGTHS[name]]
    parts = [p.strip() for p in values.split(",") if p.strip()]
    if not parts:
        raise ModescopeError(f"remedy '{name}=' gives no strength; write e.g. {name}={DEFAULT_STRENGTHS[name][0]:g}")
    return [RemedyPoint(name, _strength(name, p)) for p in parts]


def parse_grid(specs: list[str] | tuple[str, ...]) -> list[RemedyPoint]:
    """Every point of the grid, in order, each once; `direct` first (every remedy is compared with it)."""
    specs = [s for s in specs if s.strip()]
    if not specs:
        raise ModescopeError("the remedy grid is empty; give at least one remedy (e.g. --remedy min_p=0.1)")
    points: list[RemedyPoint] = [RemedyPoint("direct")]
    for spec in specs:
        points += [p for p in parse_remedy(spec) if p not in points]
    return points


def uses_guide(points: list[RemedyPoint]) -> bool:
    return any(p.remedy == "guided" for p in points)
