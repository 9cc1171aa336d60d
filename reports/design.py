"""A study's design from the spec its parent run logged: the swept factors and their levels.

The spec, not the finished trials, says what was swept, so a study in which some or all trials failed
still reports its grid and ties each failed trial to its point.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml
from pydantic import TypeAdapter, ValidationError

from sweeps.spec import CategoricalParam, Param

# param -> its levels as MLflow logs them (str of the value); None for a sampled range
Levels = dict[str, tuple[str, ...] | None]

_SPACE = TypeAdapter(dict[str, Param])


def spec_levels(spec_yaml: str) -> Levels | None:
    """The varied fields of the spec's `space` with their choices; None when the text holds no valid space."""
    try:
        raw = yaml.safe_load(spec_yaml)
        space = _SPACE.validate_python(raw["space"]) if isinstance(raw, Mapping) and "space" in raw else None
    except (yaml.YAMLError, ValidationError):
        return None
    if space is None:
        return None
    return {path: tuple(str(c) for c in param.choices) if isinstance(param, CategoricalParam) else None
            for path, param in space.items() if param.varies()}
