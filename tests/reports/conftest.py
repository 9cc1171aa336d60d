"""A synthetic MLflow store written with the suite's conventions (docs/architecture.md), for the report tests.

Study FULL: f in {1, 4, 8} x schedule in {linear, cosine} x seeds {0, 1}, finished, with every final metric,
intermediate FIDs, DDIM and guidance variants and a samples.png each; plus one FAILED, one KILLED (pruned)
and one RUNNING trial whose (bad) metrics must stay out of every aggregate. The parent run stays RUNNING.
Study SPARSE: latent channels c in {3, 4} x two seeds with only fid_domain, psnr and val_loss, so that
every figure lacks data. Study FAILED: a 2-factor grid (f x c) in which every trial failed, known from
its spec alone. Study EMPTY: a parent run without trials. Study COVERAGE (`write_coverage_study`, also
written into a real `mlflow server`): a grid f in {1, 4, 8} x seeds {0, 1} with a duplicate, a trial whose
worker died, an interrupted one, a KILLED one from before the outcome tag, and two missing points.
Study TINY-REAL (`tiny_real_study`) is no fake: a real sweep of f in {1, 2} on the micro preset.
Tests reach the constants through the fixture object (tests run with --import-mode=importlib, which
makes a helper module unimportable by name).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from ldm.config import Override, build_config, parse_overrides
from ldm.tracking import flatten
from reports.build import ReportSummary, build_report
from sweeps.spec import parse_spec
from sweeps.workers import StudySummary, run_sweep


@dataclass(frozen=True)
class SyntheticStore:
    FULL_STUDY: ClassVar[str] = "toy-ablation"
    SPARSE_STUDY: ClassVar[str] = "toy-sparse"
    EMPTY_STUDY: ClassVar[str] = "toy-empty"
    FAILED_STUDY: ClassVar[str] = "toy-failed"
    F_VALUES: ClassVar[tuple[int, ...]] = (1, 4, 8)
    SCHEDULES: ClassVar[tuple[str, ...]] = ("linear", "cosine")
    SEEDS: ClassVar[tuple[int, ...]] = (0, 1)
    FID_STEPS: ClassVar[tuple[int, ...]] = (100, 200, 300)
    DDIM_STEPS: ClassVar[tuple[int, ...]] = (10, 50)
    GUIDANCE_SCALES: ClassVar[tuple[float, ...]] = (1.0, 3.0, 5.0)
    NUM_SAMPLES: ClassVar[str] = "500"
    EXTRACTOR_WEIGHTS: ClassVar[str] = "domain_classifier mnist (99% acc) sha256:0123abcd"
    GIT_COMMIT: ClassVar[str] = "abc1234"
    DEVICE: ClassVar[str] = "cpu (2 cores, synthetic)"
    FAIL_REASON: ClassVar[str] = "RuntimeError: out of memory at diffusion step 12 <&>"
    PRUNE_REASON: ClassVar[str] = "pruned at step 200: fid_domain 500.0 above the median"
    # As `sweeps.runs` logs it: the swept factors are read from `space` (its choices in spec order).
    SPEC_YAML: ClassVar[str] = (
        "name: toy-ablation\nsampler: grid\nspace:\n  autoencoder.f: {type: categorical, choices: [8, 1, 4]}\n"
        "  diffusion.schedule: {type: categorical, choices: [linear, cosine]}\n"
        "  diffusion.conditioning: {type: categorical, choices: [class]}\nseeds: [0, 1]\n")
    FAILED_SPEC_YAML: ClassVar[str] = (
        "name: toy-failed\nsampler: grid\nspace:\n  autoencoder.f: {type: categorical, choices: [1, 4]}\n"
        "  autoencoder.latent_channels: {type: categorical, choices: [3, 4]}\n")
    # Metrics of the failed, pruned and running trials: far from every finished value, so a leak shows.
    LEAKED: ClassVar[float] = 999.0

    tracking_uri: str
    root: Path
    coverage: CoverageStudy
    finished: pd.DataFrame  # FULL's finished trials: f, schedule, seed, run_id and every final metric logged
    parent_run_ids: dict[str, str]
    other_run_ids: dict[str, str]  # "failed", "pruned", "running" -> run id (FULL)

    @staticmethod
    def final_metrics(f: int, latent_channels: int, schedule: str, seed: int) -> dict[str, float]:
        """Made-up but plausible values with seed noise, so that std and best cells are non-trivial."""
        rng = np.random.default_rng([f, latent_channels, SyntheticStore.SCHEDULES.index(schedule), seed])
        fid = 20 + 4 * abs(math.log2(f) - 2.5) + (3.0 if schedule == "linear" else 0.0) + rng.normal(0, 1)
        metrics = {
            "fid_domain": fid,
            "is_domain": 8.0 - fid / 10 + rng.normal(0, 0.1),
            "kid_domain": fid / 1000 + rng.normal(0, 1e-4),
            "precision_domain": 0.9 - fid / 200,
            "recall_domain": 0.5 + rng.normal(0, 0.02),
            "cond_accuracy": 95 - fid / 2,
            "psnr": 40 - 4 * math.log2(f) + rng.normal(0, 0.2),
            "rfid_domain": 1 + math.log2(f) ** 2 + rng.normal(0, 0.1),
            "bpp": 8.0 * latent_channels / f**2,
            "params_unet": 1.234 + 0.1 * math.log2(f),
            "unet_gflops": 5.0 / f**2,
            "train_images_per_s": 400 * f + rng.normal(0, 5),
            "sample_images_per_s": 30 * f + rng.normal(0, 1),
            "train_hours": 0.02 / f,
            "val_loss": 0.1 + (0.01 if schedule == "linear" else 0.0) + rng.normal(0, 0.002),
        }
        for k in SyntheticStore.DDIM_STEPS:
            metrics[f"ddim{k}/fid_domain"] = fid + 50 / k
            metrics[f"ddim{k}/sample_images_per_s"] = 30 * f * 50 / k
        for w in SyntheticStore.GUIDANCE_SCALES:
            metrics[f"g{w}/fid_domain"] = fid + 0.5 * (w - 2.5) ** 2
            metrics[f"g{w}/is_domain"] = metrics["is_domain"] + w
            metrics[f"g{w}/cond_accuracy"] = metrics["cond_accuracy"] + 2 * w
        return metrics


S = SyntheticStore


class _StudyWriter:
    """Writes one study the way `sweeps` does: a parent run and nested trial runs."""

    def __init__(self, client: MlflowClient, root: Path, study: str, spec: str | None) -> None:
        self.client, self.root, self.study = client, root, study
        # A server stores artifacts itself (proxied); a local store keeps them under `root`.
        served = client.tracking_uri.startswith("http")
        self.experiment_id = client.create_experiment(
            study, artifact_location=None if served else (root / "artifacts" / study).as_uri())
        parent = client.create_run(self.experiment_id, run_name=study, tags={
            "ldm.role": "study", "ldm.study": study, "ldm.git_commit": S.GIT_COMMIT, "ldm.device": S.DEVICE})
        self.parent_id = parent.info.run_id
        self.trials = 0
        if spec is not None:
            client.log_batch(self.parent_id, params=[Param("spec.sampler", "grid"), Param("spec.seeds", "0,1")])
            path = root / "spec" / study / "spec.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(spec)
            client.log_artifact(self.parent_id, str(path))

    def trial(self, overrides: list[str], seed: int, steps: dict[str, dict[int, float]],
              final: dict[str, float], tags: dict[str, str] | None = None, samples: bool = False) -> str:
        """One child run: every resolved config field as a param, step metrics, final metrics at the last step."""
        number = self.trials
        self.trials += 1
        cfg = build_config({}, [*parse_overrides(overrides), Override("training.seed", seed),
                                Override("name", f"{self.study}-trial{number}")])
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags={
            "mlflow.parentRunId": self.parent_id, "ldm.role": "trial", "ldm.study": self.study,
            "ldm.trial_number": str(number), "ldm.config_hash": cfg.config_hash(),
            "ldm.first_stage_hash": cfg.first_stage_hash(), "ldm.git_commit": S.GIT_COMMIT,
            "ldm.torch_version": "2.14.1", "ldm.device": S.DEVICE, "ldm.extractor_weights": S.EXTRACTOR_WEIGHTS,
            "ldm.num_samples": S.NUM_SAMPLES, **(tags or {})})
        run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in {**flatten(cfg.model_dump(mode="json")), "seed": seed}.items()]
        now = int(time.time() * 1000)
        last = max((s for history in steps.values() for s in history), default=0)
        metrics = [Metric(k, v, now + s, s) for k, history in steps.items() for s, v in history.items()]
        metrics += [Metric(k, v, now + last + 1, last) for k, v in final.items()]
        self.client.log_batch(run_id, params=params, metrics=metrics)  # one transaction: within MLflow's limits
        if samples:
            self.client.log_artifact(run_id, str(_samples_png(self.root / "samples" / run_id, number)))
        return run_id


def _samples_png(folder: Path, number: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((24, 24, 3), np.uint8)
    pixels[:, :, number % 3] = 40 * (number + 1) % 256
    path = folder / "samples.png"
    Image.fromarray(pixels).save(path)
    return path


def _write_full(client: MlflowClient, root: Path) -> tuple[str, pd.DataFrame, dict[str, str]]:
    writer = _StudyWriter(client, root, S.FULL_STUDY, spec=S.SPEC_YAML)
    common = ["diffusion.conditioning=class", "evaluation.fid_every=100"]
    rows = []
    for f in S.F_VALUES:
        for schedule in S.SCHEDULES:
            for seed in S.SEEDS:
                final = S.final_metrics(f, 4, schedule, seed)
                fid_curve = {s: final["fid_domain"] + 3000 / s for s in S.FID_STEPS[:-1]}
                run_id = writer.trial(
                    [f"autoencoder.f={f}", f"diffusion.schedule={schedule}", *common],
                    seed,
                    steps={"fid_domain": fid_curve, "diffusion/loss": {s: 1.0 / s for s in S.FID_STEPS}},
                    final=final,
                    samples=True,
                )
                client.set_terminated(run_id, "FINISHED")
                rows.append({"f": f, "schedule": schedule, "seed": seed, "run_id": run_id, **final})
    leaked = {"fid_domain": S.LEAKED, "psnr": S.LEAKED, "bpp": S.LEAKED}
    others = {
        "failed": writer.trial(["autoencoder.f=8", "diffusion.schedule=cosine", *common], 2, steps={},
                               final=leaked, tags={"ldm.fail_reason": S.FAIL_REASON, "ldm.trial_outcome": "failed"}),
        "pruned": writer.trial(["autoencoder.f=1", "diffusion.schedule=linear", *common], 2,
                               steps={"fid_domain": {100: S.LEAKED, 200: S.LEAKED}}, final={},
                               tags={"ldm.fail_reason": S.PRUNE_REASON, "ldm.trial_outcome": "pruned"}),
        "running": writer.trial(["autoencoder.f=4", "diffusion.schedule=linear", *common], 2,
                                steps={"fid_domain": {100: S.LEAKED}}, final={}),
    }
    client.set_terminated(others["failed"], "FAILED")
    client.set_terminated(others["pruned"], "KILLED")
    return writer.parent_id, pd.DataFrame(rows), others


def _write_sparse(client: MlflowClient, root: Path) -> str:
    writer = _StudyWriter(client, root, S.SPARSE_STUDY, spec=None)
    for c in (3, 4):
        for seed in S.SEEDS:
            final = S.final_metrics(4, c, "cosine", seed)
            run_id = writer.trial([f"autoencoder.latent_channels={c}"], seed, steps={},
                                  final={k: final[k] for k in ("fid_domain", "psnr", "val_loss")})
            client.set_terminated(run_id, "FINISHED")
    return writer.parent_id


def _write_failed(client: MlflowClient, root: Path) -> str:
    writer = _StudyWriter(client, root, S.FAILED_STUDY, spec=S.FAILED_SPEC_YAML)
    for f in (1, 4):
        for c in (3, 4):
            run_id = writer.trial([f"autoencoder.f={f}", f"autoencoder.latent_channels={c}"], 0, steps={},
                                  final={}, tags={"ldm.fail_reason": S.FAIL_REASON})
            client.set_terminated(run_id, "FAILED")
    client.set_terminated(writer.parent_id, "FAILED")
    return writer.parent_id


@dataclass(frozen=True)
class CoverageStudy:
    """Trial number -> run id of the COVERAGE study, and the final FID each finished trial logged."""

    SPEC_YAML: ClassVar[str] = (
        "name: toy-coverage\nsampler: grid\nspace:\n  autoencoder.f: {type: categorical, choices: [1, 4, 8]}\n"
        "seeds: [0, 1]\nreport: {table_style: resized, formats: {fid_domain: {decimals: 1}}}\n")
    WORKER_DIED_REASON: ClassVar[str] = "worker host-b:4711 stopped heart-beating; trial queued again"
    INTERRUPTED_REASON: ClassVar[str] = "interrupted"
    # trial number: (f, seed, how it ended, final fid_domain or None, end time in s after the start)
    TRIALS: ClassVar[dict[int, tuple[int, int, str, float | None, int]]] = {
        0: (1, 0, "complete", 30.0, 1),
        1: (1, 1, "complete", 32.0, 2),
        2: (4, 0, "complete", 90.0, 9),  # re-queued point: finished after trial 3, so trial 2 is the duplicate
        3: (4, 0, "complete", 20.0, 3),
        4: (4, 1, "worker_died", None, 4),
        5: (8, 0, "interrupted", None, 5),
        6: (8, 1, "complete", 40.0, 6),
        7: (1, 0, "KILLED", None, 7),  # a run from before `ldm.trial_outcome`: its status alone
    }

    name: str
    parent_run_id: str
    run_ids: dict[int, str]


def write_coverage_study(client: MlflowClient, root: Path, name: str = "toy-coverage") -> CoverageStudy:
    """The COVERAGE study, as a sweep over several machines leaves it."""
    statuses = {"complete": "FINISHED", "worker_died": "KILLED", "interrupted": "KILLED", "KILLED": "KILLED"}
    reasons = {"worker_died": CoverageStudy.WORKER_DIED_REASON, "interrupted": CoverageStudy.INTERRUPTED_REASON}
    writer = _StudyWriter(client, root, name, spec=CoverageStudy.SPEC_YAML)
    start = int(time.time() * 1000)
    run_ids = {}
    for number, (f, seed, ended, fid, end_s) in CoverageStudy.TRIALS.items():
        tags = {"ldm.fail_reason": reasons[ended]} if ended in reasons else {}
        if ended != "KILLED":
            tags["ldm.trial_outcome"] = ended
        run_ids[number] = writer.trial([f"autoencoder.f={f}"], seed, steps={},
                                       final={"fid_domain": fid} if fid is not None else {}, tags=tags)
        client.set_terminated(run_ids[number], statuses[ended], end_time=start + 1000 * end_s)
    return CoverageStudy(name, writer.parent_id, run_ids)


@dataclass(frozen=True)
class FlawedStudy:
    """A grid f in {2, 4} x seeds {0, 1, 2} whose f = 4 seed-2 trial never finished, with FIDs that overlap (no
    real difference) and bootstrap replicates for each run, as `evaluation.bootstrap_replicates` writes them."""

    NAME: ClassVar[str] = "toy-flawed"
    SPEC_YAML: ClassVar[str] = (
        "name: toy-flawed\nsampler: grid\nspace:\n  autoencoder.f: {type: categorical, choices: [2, 4]}\n"
        "seeds: [0, 1, 2]\nobjectives: [{metric: fid_domain, direction: minimize}]\n")
    FIDS: ClassVar[dict[tuple[int, int], float]] = {(2, 0): 30.0, (2, 1): 31.6, (2, 2): 29.1, (4, 0): 30.4,
                                                    (4, 1): 29.9}
    REPLICATES: ClassVar[int] = 50

    tracking_uri: str


def write_flawed_study(client: MlflowClient, root: Path) -> None:
    writer = _StudyWriter(client, root, FlawedStudy.NAME, spec=FlawedStudy.SPEC_YAML)
    # Replicate b of every run resamples the same slots: a shared component plus a run's own.
    shared = np.random.default_rng(0).normal(0, 1.0, FlawedStudy.REPLICATES)
    for (f, seed), fid in FlawedStudy.FIDS.items():
        run_id = writer.trial([f"autoencoder.f={f}"], seed, steps={}, final={"fid_domain": fid},
                              tags={"ldm.trial_outcome": "complete"})
        own = np.random.default_rng([f, seed]).normal(0, 0.5, FlawedStudy.REPLICATES)
        path = root / "bootstrap" / run_id / "bootstrap.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"fid_domain": (fid + shared + own).tolist()}))
        client.log_artifact(run_id, str(path), "evaluation")
        client.set_terminated(run_id, "FINISHED")
    client.set_terminated(writer.parent_id, "FINISHED")


def _build_store(root: Path) -> SyntheticStore:
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    full_parent, finished, others = _write_full(client, root)
    parents = {S.FULL_STUDY: full_parent, S.SPARSE_STUDY: _write_sparse(client, root),
               S.FAILED_STUDY: _write_failed(client, root),
               S.EMPTY_STUDY: _StudyWriter(client, root, S.EMPTY_STUDY, spec=None).parent_id}
    write_flawed_study(client, root)
    return SyntheticStore(uri, root, write_coverage_study(client, root), finished, parents, others)


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    """Written once per session: creating the MLflow schema alone takes seconds."""
    return _build_store(tmp_path_factory.getbasetemp() / "synthetic-mlflow")


@pytest.fixture(scope="session")
def served_coverage_study(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> CoverageStudy:
    """The COVERAGE study in a real `mlflow server`, under a name of its own (CI shares one server between sessions).

    The files the writer logged from are deleted: what a report needs must come from the server.
    """
    root = tmp_path_factory.mktemp("served-writer")
    study = write_coverage_study(MlflowClient(tracking_uri=mlflow_server), root, f"toy-coverage-{uuid.uuid4().hex[:8]}")
    shutil.rmtree(root)
    return study


def _report(study: str, store: SyntheticStore, factory: pytest.TempPathFactory) -> ReportSummary:
    return build_report(study, factory.getbasetemp() / "reports" / study, tracking_uri=store.tracking_uri)


@pytest.fixture(scope="session")
def flawed_report(synthetic_store: SyntheticStore, tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    return _report(FlawedStudy.NAME, synthetic_store, tmp_path_factory)


@pytest.fixture(scope="session")
def full_report(synthetic_store: SyntheticStore, tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    """FULL's report in every format, built once (drawing the figures takes seconds)."""
    return _report(S.FULL_STUDY, synthetic_store, tmp_path_factory)


@pytest.fixture(scope="session")
def coverage_report(synthetic_store: SyntheticStore, tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    return _report(synthetic_store.coverage.name, synthetic_store, tmp_path_factory)


@pytest.fixture(scope="session")
def sparse_report(synthetic_store: SyntheticStore, tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    return _report(S.SPARSE_STUDY, synthetic_store, tmp_path_factory)


@dataclass(frozen=True)
class TinyRealStudy:
    NAME: ClassVar[str] = "tiny-real"
    # The micro preset with fewer samples, one extra DDIM step count (the FID-vs-throughput figure) and an
    # intermediate FID at step 2 (the FID-vs-step figure).
    MICRO: ClassVar[tuple[str, ...]] = (
        "evaluation.num_samples=16", "evaluation.kid_subset_size=8", "evaluation.ddim_steps=[1]",
        "evaluation.fid_every=2", "evaluation.fid_every_samples=10")

    sweep: StudySummary

    @property
    def tracking_uri(self) -> str:
        return self.sweep.tracking_uri


@pytest.fixture(scope="session")
def tiny_real_study(tmp_path_factory: pytest.TempPathFactory) -> TinyRealStudy:
    """Two configurations trained and evaluated for real (about 20 s), once per session."""
    workdir = tmp_path_factory.mktemp("tiny-real")
    spec = parse_spec({"name": TinyRealStudy.NAME, "base": {"preset": "micro", "overrides": list(TinyRealStudy.MICRO)},
                       "sampler": "grid", "objectives": [{"metric": "fid_domain"}],
                       "space": {"autoencoder.f": {"type": "categorical", "choices": [1, 2]}}})
    return TinyRealStudy(run_sweep(spec, workdir, log=print))
