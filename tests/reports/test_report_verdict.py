"""reports/verdict.py: one sentence per swept factor, its numbers those of the study's runs."""

from __future__ import annotations

import dataclasses

import pytest

from reports.rows import RunNumbers
from reports.runs import load_study
from reports.verdict import factor_verdict, verdicts


def test_a_clear_difference_is_stated_with_its_size_interval_p_and_seeds(synthetic_store) -> None:
    study = load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)
    f_verdict, schedule_verdict = verdicts(study, ["fid_domain"])
    finished = synthetic_store.finished
    per_seed = finished.groupby(["f", "seed"])["fid_domain"].mean().groupby("f").mean()  # cells averaged per seed
    gap = per_seed[1] - per_seed[8]
    assert f_verdict.baseline == "8" and f_verdict.sentence.startswith(f"f = 8 beats f = 1 on FID (domain) by {gap:.1f} (95% CI ")
    assert ", p < 0.001, 2 seeds); f = 4 and f = 8: no significant difference (p = " in f_verdict.sentence
    (vs_one,) = [c for c in f_verdict.comparisons if c.arm == "1"]
    assert vs_one.difference == pytest.approx(gap) and vs_one.lo < gap < vs_one.hi
    assert schedule_verdict.sentence.startswith("schedule = cosine beats schedule = linear on FID (domain) by ")


def test_the_spec_baseline_is_the_level_every_other_is_compared_with(synthetic_store) -> None:
    study = load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)
    named = dataclasses.replace(study, report=study.report.model_copy(update={"baseline": {"autoencoder.f": 1}}))
    found = factor_verdict(named, "autoencoder.f", "fid_domain", RunNumbers(named))
    assert found.baseline == "1" and {c.arm for c in found.comparisons} == {"4", "8"}
    assert "f = 4 beats f = 1" in found.sentence and "f = 8 beats f = 1" in found.sentence
