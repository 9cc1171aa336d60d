"""A study's design from the spec its parent run logged: the swept factors, their levels and, for a grid, its seeds;
with the objectives and the spec's `report:` section, which say what the tables show.

The spec, not the finished trials, says what was swept, so a study in which some or all trials failed
still reports its grid and ties each failed trial to its point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from sweeps.spec import CategoricalParam, Objective, Param, ReportSpec, SweepSpec

# The config field the spec's `seeds` set in each trial (sweeps.spec.SweepSpec.trial_config).
SEED_PARAM = "training.seed"

# param -> its levels as MLflow logs them (str of the value); None for a sampled range
Levels = dict[str, tuple[str, ...] | None]

_SPACE = TypeAdapter(dict[str, Param])
_SEEDS = TypeAdapter(list[int])
_OBJECTIVES = TypeAdapter(list[Objective])
_REPORT = TypeAdapter(ReportSpec)
T = TypeVar("T")


@dataclass(frozen=True)
class StudyDesign:
    """The varied fields of the spec's `space` with their levels; `grid_seeds` only for sampler `grid`."""

    levels: Levels
    grid_seeds: tuple[str, ...] | None
    objectives: tuple[str, ...] = ()
    report: ReportSpec = field(default_factory=ReportSpec)


def spec_design(spec_yaml: str) -> StudyDesign | None:
    """The design a logged spec describes; None when the text holds no valid space (or seeds)."""
    try:
        raw = yaml.safe_load(spec_yaml)
        if not isinstance(raw, Mapping) or "space" not in raw:
            return None
        space = _SPACE.validate_python(raw["space"])
        seeds = _SEEDS.validate_python(raw.get("seeds", SweepSpec.model_fields["seeds"].get_default(
            call_default_factory=True)))
    except (yaml.YAMLError, ValidationError):
        return None
    levels: Levels = {path: tuple(str(c) for c in param.choices) if isinstance(param, CategoricalParam) else None
                      for path, param in space.items() if param.varies()}
    is_grid = raw.get("sampler") == "grid" and all(v is not None for v in levels.values())
    objectives = _or_default(_OBJECTIVES, raw.get("objectives"), [])
    return StudyDesign(levels, tuple(map(str, seeds)) if is_grid else None, tuple(o.metric for o in objectives),
                       _or_default(_REPORT, raw.get("report"), ReportSpec()))


def _or_default(adapter: TypeAdapter[T], raw: object, default: T) -> T:
    """`raw` validated; `default` where it is missing, or invalid in a spec that another version of the suite wrote
    (a renamed metric, say): the factors and levels still stand, and the tables take their defaults."""
    try:
        return adapter.validate_python(raw) if raw is not None else default
    except ValidationError:
        return default
