"""reports/runs.py: reading a study from MLflow into pandas."""

from __future__ import annotations

import mlflow
import pytest

from ldm.errors import UserError
from reports.runs import TRIAL_STATES, catalog_base, configuration_label, is_seed, load_study, ordered_values


def test_parent_and_trials_split_by_state(synthetic_store) -> None:
    study = load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)
    assert study.parent["run_id"] == synthetic_store.parent_run_ids[synthetic_store.FULL_STUDY]
    assert study.state_counts() == {**dict.fromkeys(TRIAL_STATES, 0), "finished": 12, "failed": 1, "pruned": 1,
                                    "running": 1}
    assert set(study.finished["run_id"]) == set(synthetic_store.finished["run_id"])
    for state in ("failed", "pruned", "running"):
        assert study.in_state(state)["run_id"].tolist() == [synthetic_store.other_run_ids[state]]
    numbers = study.trials["tags.ldm.trial_number"].astype(int).tolist()
    assert numbers == sorted(numbers) == list(range(15))


def test_factors_are_swept_params_without_seeds_or_run_names(synthetic_store) -> None:
    full = load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)
    # `name`, `seed` and `training.seed` vary across these runs too, but are not configurations.
    assert full.finished["params.name"].nunique() == 12
    assert full.finished["params.training.seed"].nunique() == 2
    assert full.factors == ("autoencoder.f", "diffusion.schedule")
    sparse = load_study(synthetic_store.SPARSE_STUDY, synthetic_store.tracking_uri)
    assert sparse.factors == ("autoencoder.latent_channels",)


def test_factors_and_their_levels_come_from_the_spec_also_when_no_trial_finished(synthetic_store) -> None:
    failed = load_study(synthetic_store.FAILED_STUDY, synthetic_store.tracking_uri)
    assert failed.finished.empty and len(failed.in_state("failed")) == 4
    assert failed.factors == ("autoencoder.f", "autoencoder.latent_channels")
    assert failed.levels == {"autoencoder.f": ("1", "4"), "autoencoder.latent_channels": ("3", "4")}
    # A single-choice field of the spec is fixed, not swept; levels are listed in value order.
    full = load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)
    assert full.levels == {"autoencoder.f": ("1", "4", "8"), "diffusion.schedule": ("cosine", "linear")}


def test_study_without_trials_loads_empty(synthetic_store) -> None:
    study = load_study(synthetic_store.EMPTY_STUDY, synthetic_store.tracking_uri)
    assert study.trials.empty and study.factors == () and study.metric_names() == []


def test_unknown_study_names_the_existing_ones(synthetic_store) -> None:
    with pytest.raises(UserError) as err:
        load_study("no-such-study", synthetic_store.tracking_uri)
    message = str(err.value)
    assert "unknown study 'no-such-study'" in message
    for name in (synthetic_store.FULL_STUDY, synthetic_store.SPARSE_STUDY, synthetic_store.EMPTY_STUDY):
        assert name in message


def test_global_tracking_uri_is_restored(synthetic_store, tmp_path) -> None:
    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    try:
        load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)
        assert mlflow.get_tracking_uri() == elsewhere
    finally:
        mlflow.set_tracking_uri(previous)


def test_history_returns_every_step_of_a_metric(synthetic_store) -> None:
    study = load_study(synthetic_store.FULL_STUDY, synthetic_store.tracking_uri)
    run = synthetic_store.finished.iloc[0]
    history = study.history(run["run_id"], "fid_domain")
    assert history["step"].tolist() == list(synthetic_store.FID_STEPS)
    assert history["value"].iloc[-1] == pytest.approx(run["fid_domain"])
    assert history["value"].iloc[0] == pytest.approx(run["fid_domain"] + 3000 / synthetic_store.FID_STEPS[0])


def test_values_order_numerically_when_numbers() -> None:
    assert ordered_values(["16", "2", "1", "4", "2"]) == ["1", "2", "4", "16"]
    assert ordered_values(["linear", "cosine", "sigmoid"]) == ["cosine", "linear", "sigmoid"]


def test_labels_and_seeds() -> None:
    label = configuration_label({"autoencoder.f": "4", "diffusion.sampling.guidance_scale": "3.0"})
    assert label == "f=4, guidance=3.0"
    assert configuration_label({}) == "all runs"
    assert all(map(is_seed, ["seed", "training.seed", "evaluation.seed", "data.split_seed"]))
    assert not is_seed("autoencoder.f")


def test_catalog_base_of_variants_and_training_curves() -> None:
    assert catalog_base("g3.0/fid_domain") == "fid_domain"
    assert catalog_base("ddim10/sample_images_per_s") == "sample_images_per_s"
    assert catalog_base("psnr") == "psnr"
    assert catalog_base("diffusion/loss") is None and catalog_base("ae/val_loss") is None


def test_trial_state_comes_from_the_outcome_tag_and_killed_without_it_is_not_pruned(synthetic_store) -> None:
    c = synthetic_store.coverage
    study = load_study(c.name, synthetic_store.tracking_uri)
    states = dict(zip(study.trials["tags.ldm.trial_number"].astype(int), study.trials["state"]))
    assert states == {0: "finished", 1: "finished", 2: "duplicate", 3: "finished", 4: "worker_died",
                      5: "interrupted", 6: "finished", 7: "killed"}
    assert study.trials.loc[study.trials["state"] == "duplicate", "duplicate_of"].tolist() == ["3"]
    assert sorted(study.finished["run_id"]) == sorted(c.run_ids[n] for n in (0, 1, 3, 6))


def test_grid_points_and_the_missing_ones_come_from_the_spec(synthetic_store) -> None:
    study = load_study(synthetic_store.coverage.name, synthetic_store.tracking_uri)
    assert study.grid_seeds == ("0", "1")
    assert [tuple(p.values()) for p in study.grid_points()] == [
        ("1", "0"), ("4", "0"), ("8", "0"), ("1", "1"), ("4", "1"), ("8", "1")]
    assert study.missing_points() == [{"autoencoder.f": "8", "training.seed": "0"},
                                      {"autoencoder.f": "4", "training.seed": "1"}]
    sparse = load_study(synthetic_store.SPARSE_STUDY, synthetic_store.tracking_uri)  # no spec: no grid
    assert sparse.grid_seeds is None and sparse.grid_points() == sparse.missing_points() == []
