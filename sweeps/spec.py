"""A sweep spec: which config fields to vary, what to optimise, and how Optuna searches."""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluation.metric_catalog import CATALOG, Direction, MetricInfo, metric_info
from ldm.config import (
    AutoencoderConfig,
    ExperimentConfig,
    ExtractorName,
    Override,
    build_config,
    format_validation_error,
    load_config,
    parse_overrides,
)
from ldm.errors import ConfigError, UserError
from ldm.user_yaml import load_yaml_mapping

SamplerName = Literal["grid", "tpe", "nsga2", "random"]
# How `ldm report` sets a LaTeX table: as it is, shrunk to the line width, or turned on a page of its own.
TableStyle = Literal["plain", "resized", "landscape"]
PrunerName = Literal["none", "median", "hyperband"]
SPEC_SUFFIX = ".yaml"
# Found beside this module: importlib.resources cannot list a package that an editable install maps as a
# namespace package.
SHIPPED_SPECS = Path(__file__).resolve().parent
# The sweep sets these itself: the seed from `seeds`, the run name and tracking from the study.
RESERVED_PATHS = {"training.seed": "list the seeds under `seeds`", "name": "the study names its trials",
                  "tracking": "the study owns tracking"}
PRUNE_METRICS = ["val_loss", *(f"fid_{e}" for e in get_args(ExtractorName))]
# The identity first stage (f = 1) is not trained: none of its training settings has an effect.
IDENTITY_TRAINING_PREFIX = "training.autoencoder."


class SpecError(UserError):
    """An invalid sweep spec; the message names the field, the value and what is allowed."""


class _SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CategoricalParam(_SpecModel):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _scalars(cls, choices: list[Any]) -> list[Any]:
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ValueError(f"choice {c!r} is not allowed; allowed: str, int, float, bool or null "
                                 "(Optuna cannot store lists or mappings as categorical choices)")
        if len({json.dumps(c) for c in choices}) < len(choices):
            raise ValueError(f"choices {choices} repeat a value; each choice must be distinct")
        return choices

    def probe_values(self) -> list[Any]:
        return list(self.choices)

    def varies(self) -> bool:
        """Whether the sweep gives this field more than one value."""
        return len({json.dumps(choice) for choice in self.choices}) > 1

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)


class IntParam(_SpecModel):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low={self.low} exceeds high={self.high}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError(f"log=true needs low >= 1 and step 1 (got low={self.low}, step={self.step})")
        return self

    def probe_values(self) -> list[Any]:
        return [self.low, self.high]

    def varies(self) -> bool:
        """Whether the sweep gives this field more than one value."""
        return self.low != self.high

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


class FloatParam(_SpecModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low={self.low} exceeds high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0 (got low={self.low})")
        return self

    def probe_values(self) -> list[Any]:
        return [self.low, self.high]

    def varies(self) -> bool:
        """Whether the sweep gives this field more than one value."""
        return self.low != self.high

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high, log=self.log)


Param = Annotated[CategoricalParam | IntParam | FloatParam, Field(discriminator="type")]


class BaseSpec(_SpecModel):
    """The config every trial starts from: a preset or a config file (default preset `tiny`), then overrides."""

    preset: str | None = None
    config: Path | None = None
    overrides: list[str] = Field(default_factory=list)

    def load(self) -> ExperimentConfig:
        return load_config(self.config, self.preset, parse_overrides(self.overrides))


def catalog_metric(name: str) -> MetricInfo:
    """The catalog entry of a metric name; ValueError (for pydantic to report) listing the names allowed."""
    try:
        return metric_info(name)
    except KeyError:
        raise ValueError(f"unknown metric '{name}'; allowed: {', '.join(CATALOG)} "
                         "(also as g<scale>/<metric> or ddim<K>/<metric>)") from None


class Objective(_SpecModel):
    metric: str
    direction: Direction | None = Field(None, description="default: the metric catalog's direction")

    @model_validator(mode="after")
    def _known_metric(self) -> Objective:
        info = catalog_metric(self.metric)
        if not info.objective:
            raise ValueError(f"metric '{self.metric}' describes another metric's spread or interval and cannot be "
                             f"an objective; allowed: {', '.join(m.name for m in CATALOG.values() if m.objective)}")
        if self.direction is None:
            self.direction = info.direction
        elif self.direction != info.direction:
            raise ValueError(f"metric '{self.metric}' can only be {info.direction}d, "
                             f"not {self.direction}d")
        return self


class MetricFormat(_SpecModel):
    """How tables show one metric, over the catalog's own format: `value * scale` with `decimals` digits."""

    decimals: int | None = Field(None, ge=0, le=6)
    scale: float | None = Field(None, gt=0)


class ReportSpec(_SpecModel):
    """What `ldm report` puts in the study's tables; its `--metrics` and `--table-style` override them."""

    metrics: list[str] | None = Field(
        None, min_length=1, description="table columns (catalog names); default: the objectives and a short "
        "set for the factors swept")
    baseline: dict[str, Any] = Field(
        default_factory=dict, description="the comparison baseline: swept field -> its level (e.g. "
        "autoencoder.f: 4); stored with the spec for the statistics that compare against it")
    formats: dict[str, MetricFormat] = Field(default_factory=dict, description="catalog metric -> decimals, scale")
    table_style: TableStyle = "plain"

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        for name in metrics or []:
            catalog_metric(name)
        if metrics is not None and len(set(metrics)) < len(metrics):
            raise ValueError(f"metrics={metrics} repeat a name; each column must be distinct")
        return metrics

    @field_validator("formats")
    @classmethod
    def _catalog_names(cls, formats: dict[str, MetricFormat]) -> dict[str, MetricFormat]:
        for name in formats:
            if name not in CATALOG:  # a variant (ddim<K>/...) is shown as its base metric
                raise ValueError(f"unknown metric '{name}'; allowed: {', '.join(CATALOG)}")
        return formats


@dataclass(frozen=True)
class TrialPoint:
    """One configuration to run: the swept values by dotted path, and the training seed."""

    params: dict[str, Any]
    seed: int

    def key(self) -> str:
        return json.dumps([self.params, self.seed], sort_keys=True)


class SweepSpec(_SpecModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="study name")
    description: str = ""
    base: BaseSpec = Field(default_factory=BaseSpec)
    space: dict[str, Param] = Field(default_factory=dict)
    objectives: list[Objective] = Field(min_length=1)
    sampler: SamplerName | None = Field(None, description="default: nsga2 for several objectives, else tpe")
    pruner: PrunerName = "none"
    prune_on: str = "val_loss"
    n_trials: int | None = Field(None, ge=1, description="default for grid: every point once")
    timeout_s: float | None = Field(None, gt=0)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    heartbeat_s: int = Field(10, ge=1, description="how often a running trial's worker proves it is alive")
    grace_s: int = Field(60, ge=1, description="silence after which any worker fails and re-queues the trial")
    gpus_per_trial: int = Field(
        1, ge=1, description="ranks per trial: above 1 each trial runs under torchrun on that many GPUs of its "
        "worker's own (CPU processes where there are no GPUs)")
    report: ReportSpec = Field(default_factory=ReportSpec)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"seeds={seeds} repeat a seed; each seed must be distinct")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if self.sampler is None:
            self.sampler = "nsga2" if len(self.objectives) > 1 else "tpe"
        errors = _collected([self._check_heartbeat, self._check_search, self._check_pruning, self._check_baseline,
                             self._check_configs])
        if errors:
            raise ValueError("; ".join(errors))  # every error at once, so one edit fixes the spec
        return self

    def _check_heartbeat(self) -> None:
        if self.grace_s <= self.heartbeat_s:
            raise ValueError(f"grace_s={self.grace_s} must exceed heartbeat_s={self.heartbeat_s}: a live worker "
                             "would be taken for a dead one between two heartbeats")

    def _check_search(self) -> None:
        if self.sampler == "grid":
            ranged = [p for p, param in self.space.items() if not isinstance(param, CategoricalParam)]
            if ranged:
                raise ValueError(f"sampler 'grid' needs categorical params, but space.{ranged[0]} is "
                                 f"{self.space[ranged[0]].type}; use {{type: categorical, choices: [...]}} "
                                 "or sampler tpe, nsga2 or random")
            if self.n_trials is not None and self.n_trials > self.grid_size:
                raise ValueError(f"n_trials={self.n_trials} exceeds the grid's {self.grid_size} points "
                                 "(grid points never repeat); allowed: <= grid size")
        elif self.n_trials is None and self.timeout_s is None:
            raise ValueError(f"sampler '{self.sampler}' needs n_trials or timeout_s (only a grid ends by itself)")

    def _check_pruning(self) -> None:
        if self.prune_on not in PRUNE_METRICS:
            raise ValueError(f"prune_on='{self.prune_on}' is not allowed; allowed: {', '.join(PRUNE_METRICS)}")
        if self.pruner == "none":
            return
        if len(self.objectives) > 1:
            names = ", ".join(o.metric for o in self.objectives)
            raise ValueError(f"pruner '{self.pruner}' needs a single objective, but there are "
                             f"{len(self.objectives)} ({names}); allowed with several objectives: pruner none")
        if self.objectives[0].direction != "minimize":
            raise ValueError(f"pruner '{self.pruner}' prunes on {self.prune_on} (lower is better), so the "
                             f"objective must be minimized; '{self.objectives[0].metric}' is maximized")

    def _check_baseline(self) -> None:
        swept = {path: param for path, param in self.space.items() if param.varies()}
        for path, level in self.report.baseline.items():
            if path not in swept:
                raise ValueError(f"report.baseline: '{path}' is not a swept field; allowed: "
                                 f"{', '.join(swept) or 'none (the space varies nothing)'}")
            param = swept[path]
            if isinstance(param, CategoricalParam):
                if level not in param.choices:
                    raise ValueError(f"report.baseline.{path}={level!r} is not one of its levels; allowed: "
                                     f"{', '.join(map(repr, param.choices))}")
            elif not isinstance(level, (int, float)) or not param.low <= level <= param.high:
                raise ValueError(f"report.baseline.{path}={level!r} is outside its range; allowed: a number in "
                                 f"[{param.low}, {param.high}]")

    def _check_configs(self) -> None:
        base = _as_value_error("", self.base.load)
        self._check_identity_duplicates(base)
        errors = _collected([functools.partial(self._check_param, path, param) for path, param in self.space.items()])
        if errors:
            raise ValueError("; ".join(errors))
        self._check_produced(base, "the base config")
        if self.sampler == "grid":
            for point in self.grid_points():
                cfg = _as_value_error(f"grid point {point.params}: ", self.trial_config, point)
                self._check_produced(cfg, f"grid point {point.params}")
        if self.pruner != "none" and self.prune_on.startswith("fid_"):
            extractor = self.prune_on.removeprefix("fid_")
            if base.evaluation.fid_every is None or extractor not in base.evaluation.extractors:
                raise ValueError(f"prune_on='{self.prune_on}' needs intermediate FIDs: set "
                                 f"evaluation.fid_every and include '{extractor}' in evaluation.extractors")

    def _check_param(self, path: str, param: Param) -> None:
        _check_path(path)
        for value in param.probe_values():
            cfg = _as_value_error(f"space.{path}={value!r}: ", self.trial_config,
                                  TrialPoint({path: value}, self.seeds[0]))
            self._check_produced(cfg, f"space.{path}={value!r}")

    def _check_produced(self, cfg: ExperimentConfig, where: str) -> None:
        """Every objective must be a metric the trial of `cfg` returns, or the study fails only after training."""
        from sweeps.objective import unproduced  # the trial module: what a trial returns is its business

        for objective in self.objectives:
            reason = unproduced(objective.metric, cfg)
            if reason is not None:
                raise ValueError(f"objective '{objective.metric}' is not measured with {where}: {reason}")

    def _check_identity_duplicates(self, base: ExperimentConfig) -> None:
        """Fields the identity first stage ignores may not be swept where f can be 1: the trials would repeat."""
        f_param = self.space.get("autoencoder.f")
        if min(f_param.probe_values() if f_param is not None else [base.autoencoder.f]) > 1:
            return
        ignored = [path for path, param in self.space.items() if param.varies() and (
            path.startswith(IDENTITY_TRAINING_PREFIX) or (
                path.startswith("autoencoder.")
                and path.removeprefix("autoencoder.") not in AutoencoderConfig.IDENTITY_FIELDS))]
        if ignored:
            names = ", ".join(f"space.{path}" for path in ignored)
            raise ValueError(f"{names} cannot be swept while autoencoder.f can be 1: the identity first stage "
                             "(f = 1) ignores it, so its trials would be duplicates; allowed: sweep it over f >= 2 "
                             "only (run f = 1 in a spec of its own)")

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.choices) for p in self.space.values()) * len(self.seeds)

    def grid_points(self) -> list[TrialPoint]:
        """Every grid point, all configurations for the first seed before the next seed."""
        paths = list(self.space)
        combos = list(itertools.product(*(self.space[p].probe_values() for p in paths)))
        return [TrialPoint(dict(zip(paths, combo)), seed) for seed in self.seeds for combo in combos]

    def trial_budget(self, n_trials: int | None) -> int | None:
        """Finished trials the study should reach: the explicit count, else the spec's, else the grid size."""
        n = n_trials or self.n_trials
        if self.sampler != "grid":
            return n
        if n is not None and n > self.grid_size:
            raise SpecError(f"n_trials={n} exceeds the grid's {self.grid_size} points of study "
                            f"'{self.name}'; allowed: <= {self.grid_size}")
        return n or self.grid_size

    def trial_config(self, point: TrialPoint) -> ExperimentConfig:
        overrides = [*(Override(path, value) for path, value in point.params.items()),
                     Override("training.seed", point.seed)]
        return build_config(self.base.load().model_dump(mode="json"), overrides)

    def objective_values(self, metrics: dict[str, float]) -> list[float]:
        """The objectives in spec order; a missing or non-finite one is an error of the trial."""
        values = []
        for o in self.objectives:
            if o.metric not in metrics:
                raise KeyError(f"the trial returned no '{o.metric}'; it returned: {', '.join(sorted(metrics))}")
            value = float(metrics[o.metric])
            if not math.isfinite(value):
                raise ValueError(f"objective {o.metric} is {value}")
            values.append(value)
        return values


def short_param_names(paths: list[str]) -> list[str]:
    """Swept paths by their last part (`autoencoder.f` -> `f`), the full path where two last parts clash."""
    last = [path.rsplit(".", 1)[-1] for path in paths]
    return [short if last.count(short) == 1 else path for short, path in zip(last, paths)]


def _collected(checks: list[Callable[[], None]]) -> list[str]:
    """The messages of every check that fails."""
    errors = []
    for check in checks:
        try:
            check()
        except ValueError as e:
            errors.append(str(e))
    return errors


def _as_value_error(prefix: str, build: Callable[..., ExperimentConfig], *args: Any) -> ExperimentConfig:
    """Build a config inside a validator, turning its ConfigError into a ValueError that pydantic reports."""
    try:
        return build(*args)
    except ConfigError as e:
        raise ValueError(f"{prefix}{e}") from None


def _check_path(path: str) -> None:
    """A swept path must name a leaf field of ExperimentConfig that the sweep does not set itself."""
    for reserved, why in RESERVED_PATHS.items():
        if path == reserved or path.startswith(f"{reserved}."):
            raise ValueError(f"space.{path} cannot be swept: {why}")
    model: type[BaseModel] = ExperimentConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if part not in model.model_fields:
            raise ValueError(f"space: unknown config field '{path}'; fields of {where}: "
                             f"{', '.join(model.model_fields)}")
        annotation = model.model_fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1 and not is_section:
            raise ValueError(f"space: '{'.'.join(parts[: i + 1])}' is a value, not a section, in '{path}'")
        if i == len(parts) - 1 and is_section:
            raise ValueError(f"space: '{path}' is a section; sweep one of its fields: "
                             f"{', '.join(annotation.model_fields)}")
        if is_section:
            model = annotation


def shipped_spec_names() -> list[str]:
    return sorted(p.name.removesuffix(SPEC_SUFFIX) for p in SHIPPED_SPECS.glob(f"*{SPEC_SUFFIX}"))


def load_spec(spec: str | Path) -> SweepSpec:
    """A spec from a YAML file, or a shipped spec by bare name (`quickstart`)."""
    path = Path(spec)
    if not path.is_file():
        if str(spec) not in shipped_spec_names():
            raise SpecError(f"spec '{spec}' is neither a file nor a shipped spec; shipped: "
                            f"{', '.join(shipped_spec_names())}")
        path = SHIPPED_SPECS / f"{spec}{SPEC_SUFFIX}"
    raw = load_yaml_mapping(path, f"spec '{path}'", "a mapping of " + ", ".join(SweepSpec.model_fields), SpecError)
    base = raw.get("base")
    if isinstance(base, dict) and base.get("config"):
        # A config file named by the spec is found next to the spec, wherever the command runs.
        base["config"] = str(path.parent / Path(base["config"]).expanduser())
    return parse_spec(raw, source=f"spec '{path}'")


def parse_spec(raw: dict[str, Any], source: str = "spec") -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{source}: {format_validation_error(e)}") from None
