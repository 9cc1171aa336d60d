"""Sweep specs: validation messages, shipped specs, grid points and trial configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ldm.config import load_config, parse_overrides
from sweeps.spec import MetricFormat, ReportSpec, SpecError, TrialPoint, load_spec, parse_spec, shipped_spec_names

BASE = {"name": "s", "base": {"preset": "tiny"}, "objectives": [{"metric": "fid_domain"}], "sampler": "grid",
        "space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2]}}}


def spec_with(**changes):
    return parse_spec({**BASE, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"nmae": "x"}, "unknown field 'nmae'"),
    ({"space": {"autoencoder.f": {"type": "categorical", "choices": [1], "stepp": 2}}},
     "unknown field 'space.autoencoder.f.categorical.stepp'"),
    ({"space": {"autoencoder.ff": {"type": "categorical", "choices": [1]}}},
     "unknown config field 'autoencoder.ff'; fields of autoencoder: f, latent_channels"),
    ({"space": {"autoencoder.f.x": {"type": "categorical", "choices": [1]}}},
     "'autoencoder.f' is a value, not a section"),
    ({"space": {"diffusion.unet": {"type": "categorical", "choices": [1]}}},
     "'diffusion.unet' is a section; sweep one of its fields: base_channels"),
    ({"space": {"training.seed": {"type": "categorical", "choices": [1, 2]}}},
     "space.training.seed cannot be swept: list the seeds under `seeds`"),
    ({"space": {"diffusion.schedule": {"type": "categorical", "choices": ["cosine", "quadratic"]}}},
     "space.diffusion.schedule='quadratic': diffusion.schedule='quadratic' is not allowed; allowed: "
     "'linear', 'scaled_linear', 'cosine' or 'sigmoid'"),
    ({"space": {"autoencoder.f": {"type": "categorical", "choices": [2, 3]}}},
     "space.autoencoder.f=3: autoencoder.f=3 is not a power of two"),
    ({"space": {"autoencoder.f": {"type": "categorical", "choices": [2, 8]}}},
     "autoencoder.f=8 is too large for data.resolution=16"),
    ({"space": {"autoencoder.f": {"type": "categorical", "choices": [[1, 2]]}}},
     "choice [1, 2] is not allowed; allowed: str, int, float, bool or null"),
    ({"objectives": [{"metric": "fid_domian"}]}, "unknown metric 'fid_domian'; allowed: fid_inception"),
    ({"objectives": [{"metric": "fid_domain", "direction": "maximize"}]},
     "metric 'fid_domain' can only be minimized, not maximized"),
    ({"objectives": [{"metric": "fid_domain"}, {"metric": "sample_images_per_s"}], "pruner": "median"},
     "pruner 'median' needs a single objective, but there are 2 (fid_domain, sample_images_per_s); "
     "allowed with several objectives: pruner none"),
    ({"objectives": [{"metric": "psnr"}], "pruner": "median"}, "'psnr' is maximized"),
    ({"pruner": "median", "prune_on": "loss"}, "prune_on='loss' is not allowed; allowed: val_loss, fid_inception"),
    ({"pruner": "median", "prune_on": "fid_domain"}, "prune_on='fid_domain' needs intermediate FIDs: set "
     "evaluation.fid_every"),
    ({"space": {"autoencoder.kl_weight": {"type": "float", "low": 1e-7, "high": 1e-5}}},
     "sampler 'grid' needs categorical params, but space.autoencoder.kl_weight is float"),
    ({"sampler": "tpe"}, "sampler 'tpe' needs n_trials or timeout_s"),
    ({"n_trials": 3}, "n_trials=3 exceeds the grid's 2 points"),
    ({"sampler": "random", "n_trials": 2, "space": {"autoencoder.kl_weight": {"type": "float", "low": 0,
                                                                           "high": 1, "log": True}}},
     "log=true needs low > 0 (got low=0.0)"),
    ({"space": {"autoencoder.f": {"type": "categorical"}}}, "space.autoencoder.f.categorical.choices: field required"),
    ({"space": {"autoencoder.f": {"choices": [1, 2]}}}, "space.autoencoder.f: field 'type' required"),
    ({"space": {"autoencoder.f": {"type": "normal"}}},
     "space.autoencoder.f.type='normal' is not allowed; allowed: 'categorical', 'int', 'float'"),
    ({"sampler": "annealing"}, "sampler='annealing' is not allowed; allowed: 'grid', 'tpe', 'nsga2' or 'random'"),
    ({"seeds": [0, 0]}, "seeds=[0, 0] repeat a seed"),
    ({"space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2]},
                "autoencoder.latent_channels": {"type": "categorical", "choices": [2, 4]}}},
     "space.autoencoder.latent_channels cannot be swept while autoencoder.f can be 1: the identity first stage "
     "(f = 1) ignores it"),
    ({"space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2]},
                "training.autoencoder.steps": {"type": "categorical", "choices": [10, 20]}}},
     "space.training.autoencoder.steps cannot be swept while autoencoder.f can be 1"),
    ({"base": {"preset": "huge"}}, "unknown preset 'huge'; allowed: micro, mnist, paper-f4, shapes, tiny"),
    ({"name": "a/b"}, "name='a/b': String should match pattern"),
    ({"report": {"metrics": ["fid_domian"]}}, "report.metrics=['fid_domian']: unknown metric 'fid_domian'; "
     "allowed: fid_inception"),
    ({"report": {"metrics": ["psnr", "psnr"]}}, "metrics=['psnr', 'psnr'] repeat a name"),
    ({"report": {"formats": {"kid": {"scale": 1000}}}}, "unknown metric 'kid'; allowed: fid_inception"),
    ({"report": {"formats": {"kid_domain": {"scale": 0}}}}, "report.formats.kid_domain.scale=0"),
    ({"report": {"table_style": "wide"}},
     "report.table_style='wide' is not allowed; allowed: 'plain', 'resized' or 'landscape'"),
    ({"report": {"baseline": {"diffusion.schedule": "cosine"}}},
     "report.baseline: 'diffusion.schedule' is not a swept field; allowed: autoencoder.f"),
    ({"report": {"baseline": {"autoencoder.f": 4}}},
     "report.baseline.autoencoder.f=4 is not one of its levels; allowed: 1, 2"),
    ({"sampler": "random", "n_trials": 2, "report": {"baseline": {"training.diffusion.lr": 1.0}},
      "space": {"training.diffusion.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}},
     "report.baseline.training.diffusion.lr=1.0 is outside its range; allowed: a number in [1e-05, 0.001]"),
])
def test_invalid_spec_is_rejected_with_its_reason(changes, message):
    with pytest.raises(SpecError) as e:
        spec_with(**changes)
    assert message in str(e.value)


def test_the_report_section_defaults_and_keeps_what_it_is_given():
    assert spec_with().report == ReportSpec()
    report = spec_with(report={"metrics": ["fid_domain", "ddim10/fid_domain"], "baseline": {"autoencoder.f": 2},
                               "formats": {"kid_domain": {"scale": 1000}}, "table_style": "landscape"}).report
    assert report.metrics == ["fid_domain", "ddim10/fid_domain"] and report.baseline == {"autoencoder.f": 2}
    assert report.formats["kid_domain"] == MetricFormat(scale=1000) and report.table_style == "landscape"


def test_a_missing_field_is_named_without_quoting_the_whole_spec():
    raw = {k: v for k, v in BASE.items() if k != "objectives"}
    with pytest.raises(SpecError) as e:
        parse_spec(raw, source="spec 'x.yaml'")
    assert str(e.value) == "spec 'x.yaml': objectives: field required"


def test_first_stage_fields_are_swept_freely_where_they_take_effect():
    latent = spec_with(space={"autoencoder.f": {"type": "categorical", "choices": [2, 4]},
                              "autoencoder.latent_channels": {"type": "categorical", "choices": [2, 4]}})
    assert latent.grid_size == 4
    scaled = spec_with(space={"autoencoder.f": {"type": "categorical", "choices": [1, 2]},
                              "autoencoder.scale_factor": {"type": "categorical", "choices": [0.5, 1.0]}})
    assert scaled.grid_size == 4  # the identity uses the scale factor too
    fixed = spec_with(space={"autoencoder.f": {"type": "categorical", "choices": [1, 2]},
                             "autoencoder.latent_channels": {"type": "categorical", "choices": [3]}})
    assert fixed.grid_size == 2  # one value makes no duplicates


def test_defaults_resolve_sampler_direction_and_grid_budget():
    single = spec_with(sampler=None, n_trials=3)
    assert single.sampler == "tpe" and single.objectives[0].direction == "minimize"
    multi = spec_with(sampler=None, n_trials=3, base={"preset": "tiny", "overrides": ["evaluation.guidance_scales=[2]"]},
                      objectives=[{"metric": "fid_domain"}, {"metric": "g2/sample_images_per_s"}])
    assert multi.sampler == "nsga2" and multi.objectives[1].direction == "maximize"
    grid = spec_with(seeds=[0, 1, 2], space={"autoencoder.f": {"type": "categorical", "choices": [1, 2, 4]},
                                             "diffusion.schedule": {"type": "categorical",
                                                                    "choices": ["linear", "cosine"]}})
    assert grid.grid_size == 18 and grid.trial_budget(None) == 18 and grid.trial_budget(5) == 5
    with pytest.raises(SpecError, match="n_trials=19 exceeds the grid's 18 points"):
        grid.trial_budget(19)


def test_grid_points_cover_the_product_seed_by_seed():
    spec = spec_with(seeds=[3, 7], space={"autoencoder.f": {"type": "categorical", "choices": [1, 2]},
                                          "diffusion.prediction": {"type": "categorical",
                                                                   "choices": ["epsilon", "sample"]}})
    points = spec.grid_points()
    assert [p.seed for p in points] == [3, 3, 3, 3, 7, 7, 7, 7]
    combos = {(p.params["autoencoder.f"], p.params["diffusion.prediction"], p.seed) for p in points}
    assert combos == {(f, pred, s) for f in (1, 2) for pred in ("epsilon", "sample") for s in (3, 7)}


def test_trial_config_applies_params_and_seed_over_base_overrides():
    spec = spec_with(base={"preset": "tiny", "overrides": ["autoencoder.latent_channels=3", "data.name=shapes",
                                                             "data.channels=3"]},
                     space={"diffusion.conditioning": {"type": "categorical", "choices": ["none", "text"]}})
    cfg = spec.trial_config(TrialPoint({"diffusion.conditioning": "text"}, seed=5))
    expected = load_config(preset="tiny", overrides=parse_overrides([
        "autoencoder.latent_channels=3", "data.name=shapes", "data.channels=3", "diffusion.conditioning=text",
        "training.seed=5"]))
    assert cfg == expected


def test_string_choices_that_look_like_numbers_stay_strings():
    spec = spec_with(space={"data.root": {"type": "categorical", "choices": ["1", "data/x"]}})
    assert spec.trial_config(TrialPoint({"data.root": "1"}, 0)).data.root == Path("1")


def test_objective_values_need_every_finite_metric():
    spec = spec_with(objectives=[{"metric": "fid_domain"}, {"metric": "sample_images_per_s"}])
    assert spec.objective_values({"sample_images_per_s": 2.0, "fid_domain": 1.5, "psnr": 9.0}) == [1.5, 2.0]
    with pytest.raises(KeyError, match="returned no 'sample_images_per_s'; it returned: fid_domain"):
        spec.objective_values({"fid_domain": 1.0})
    with pytest.raises(ValueError, match="objective fid_domain is nan"):
        spec.objective_values({"fid_domain": float("nan"), "sample_images_per_s": 1.0})


def test_every_shipped_spec_loads_by_bare_name():
    names = shipped_spec_names()
    assert names == ["conditioning", "f_ablation", "quickstart", "rate_distortion", "schedules"]
    specs = {n: load_spec(n) for n in names}
    assert all(s.name == n and s.description for n, s in specs.items())
    assert specs["f_ablation"].grid_size == 4
    assert {p.params["autoencoder.f"] for p in specs["f_ablation"].grid_points()} == {1, 2, 4, 8}
    assert specs["schedules"].grid_size == 12
    assert specs["conditioning"].trial_config(specs["conditioning"].grid_points()[3]).evaluation.guidance_scales \
        == [1.0, 2.0, 4.0]
    assert [o.direction for o in specs["rate_distortion"].objectives] == ["minimize", "maximize"]
    assert specs["rate_distortion"].sampler == "nsga2"


def test_spec_file_finds_its_config_next_to_it_and_reports_bad_files(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"name": "mnist", "resolution": 16}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**BASE, "base": {"config": "base.yaml"}}))
    spec = load_spec(tmp_path / "s.yaml")
    assert spec.trial_config(spec.grid_points()[0]).data.resolution == 16
    (tmp_path / "bad.yaml").write_text("name: [")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    with pytest.raises(SpecError, match="spec 'nope' is neither a file nor a shipped spec; shipped: conditioning"):
        load_spec("nope")
    (tmp_path / "dup.yaml").write_text("name: s\nspace:\n  autoencoder.f: {type: categorical, choices: [1]}\n"
                                       "  autoencoder.f: {type: categorical, choices: [2]}\n")
    with pytest.raises(SpecError, match=r"^spec '.*dup.yaml' is not valid YAML: line 4, column 3: duplicate key "
                                        r"'autoencoder.f' \(first at line 3\)"):
        load_spec(tmp_path / "dup.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SpecError, match=r"^spec '.*empty.yaml' is empty; allowed: a mapping of name, description"):
        load_spec(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text(json.dumps([1]))
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(tmp_path / "list.yaml")
