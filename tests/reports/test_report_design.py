"""reports/design.py: the swept factors and levels of a spec.yaml as the parent run logs it."""

from __future__ import annotations

import yaml

from reports.design import StudyDesign, spec_design
from sweeps.spec import MetricFormat, ReportSpec, parse_spec


def test_levels_are_the_varied_fields_of_the_space_with_their_choices() -> None:
    spec = parse_spec({"name": "design", "base": {"preset": "tiny"}, "sampler": "random", "n_trials": 4,
                       "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.f": {"type": "categorical", "choices": [4, 2]},
                                 "diffusion.schedule": {"type": "categorical", "choices": ["cosine"]},
                                 "training.diffusion.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}})
    logged = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)  # as `sweeps.runs` writes it
    assert spec_design(logged) == StudyDesign({"autoencoder.f": ("4", "2"), "training.diffusion.lr": None}, None,
                                              ("fid_domain",))


def test_text_without_a_valid_space_has_no_design() -> None:
    assert spec_design("name: old\nsearch_space:\n  autoencoder.f: [1, 4]\n") is None
    assert spec_design("space:\n  autoencoder.f: {type: categorical}\n") is None
    assert spec_design("space: [unclosed\n") is None


def test_a_grid_spec_names_its_seeds() -> None:
    spec = parse_spec({"name": "grid", "base": {"preset": "tiny"}, "sampler": "grid", "seeds": [3, 1],
                       "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.f": {"type": "categorical", "choices": [4, 2]}}})
    logged = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    assert spec_design(logged) == StudyDesign({"autoencoder.f": ("4", "2")}, ("3", "1"), ("fid_domain",))
    # `seeds` defaults as in the spec model
    assert spec_design("sampler: grid\nspace: {}\n") == StudyDesign({}, ("0",))


def test_the_report_section_and_objectives_come_back_from_the_logged_spec() -> None:
    spec = parse_spec({"name": "rep", "base": {"preset": "tiny"}, "sampler": "grid",
                       "objectives": [{"metric": "fid_domain"}, {"metric": "sample_images_per_s"}],
                       "space": {"autoencoder.f": {"type": "categorical", "choices": [2, 4]}},
                       "report": {"metrics": ["fid_domain", "psnr"], "baseline": {"autoencoder.f": 4},
                                  "formats": {"psnr": {"decimals": 1}}, "table_style": "resized"}})
    design = spec_design(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    assert design.objectives == ("fid_domain", "sample_images_per_s")
    assert design.report == ReportSpec(metrics=["fid_domain", "psnr"], baseline={"autoencoder.f": 4},
                                       formats={"psnr": MetricFormat(decimals=1)}, table_style="resized")


def test_a_spec_without_or_with_an_unreadable_report_section_or_objectives_reports_with_the_defaults() -> None:
    assert spec_design("space: {}\n") == StudyDesign({}, None, (), ReportSpec())
    unreadable = spec_design("space:\n  autoencoder.f: {type: categorical, choices: [1, 2]}\n"
                             "report: {table_style: folded}\nobjectives: [{metric: fid_renamed}]\n")
    assert unreadable == StudyDesign({"autoencoder.f": ("1", "2")}, None, (), ReportSpec())
