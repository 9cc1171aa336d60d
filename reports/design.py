"""A study's design from the spec its parent run logged: the swept factors, their levels and, for a grid, its seeds;
with the objectives and the spec's `report:` section, which say what the tables show.

The spec, not the finished trials, says what was swept, so a study in which some or all trials failed
still reports its grid and ties each failed trial to its point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class StudyDesign:
    """The varied fields of the spec's `space` with their levels; `grid_seeds` only for sampler `grid`."""

    levels: Levels
    grid_seeds: tuple[str, ...] | None
    objectives: tuple[str, ...] = ()
    report: ReportSpec = field(default_factory=ReportSpec)


def spec_design(spec_yaml: str) -> StudyDesign | None:
    """The design a logged spec describes; None when the text holds no valid space."""
    try:
        raw = yaml.safe_load(spec_yaml)
        if not isinstance(raw, Mapping) or "space" not in raw:
            return None
        space = _SPACE.validate_python(raw["space"])
        seeds = _SEEDS.validate_python(raw.get("seeds", SweepSpec.model_fields["seeds"].get_default(
            call_default_factory=True)))
        objectives = _OBJECTIVES.validate_python(raw.get("objectives", []))
    except (yaml.YAMLError, ValidationError):
        return None
    levels: Levels = {path: tuple(str(c) for c in param.choices) if isinstance(param, CategoricalParam) else None
                      for path, param in space.items() if param.varies()}
    is_grid = raw.get("sampler") == "grid" and all(v is not None for v in levels.values())
    return StudyDesign(levels, tuple(map(str, seeds)) if is_grid else None,
                       tuple(o.metric for o in objectives), _report_spec(raw.get("report", {})))


def _report_spec(raw: object) -> ReportSpec:
    """The spec's `report:` section; the defaults where a spec written by another version holds an invalid one,
    so that its tables are still built."""
    try:
        return ReportSpec.model_validate(raw)
    except ValidationError:
        return ReportSpec()
