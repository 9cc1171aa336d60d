"""Samples stream batch by batch: the same features and metrics on 1 and 2 gloo ranks, and an ADM sample batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.experiment import draw_conditions, sample_metrics
from evaluation.generation import prepare_scorer
from evaluation.sampling import sample_batches
from ldm.distributed import Ranks
from ldm.training.pipeline import LatentDiffusionPipeline
from servers import free_port  # tests/servers.py, on the path through conftest

WORKER = Path(__file__).with_name("sharded_eval_worker.py")
REPO = Path(__file__).resolve().parents[2]


def run_ranks(world_size: int, checkpoint: Path, workdir: Path, out: Path, *mode: str) -> dict:
    """The worker on `world_size` processes with torchrun's variables; rank 0's result (or metrics.json)."""
    out.mkdir()
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(checkpoint), str(workdir), str(out), *mode],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), "\n".join(outputs)
    if mode:
        return json.loads((out / "metrics.json").read_text())
    return torch.load(out / "result.pt", weights_only=True)


def test_two_ranks_give_the_features_metrics_and_samples_of_one(class_model: Path, workdir: Path,
                                                                 tmp_path: Path) -> None:
    # The domain classifier and reference features are built once here, not raced for by the ranks.
    pipeline = LatentDiffusionPipeline.from_checkpoint(class_model)
    prepare_scorer(pipeline.config.data, pipeline.config.evaluation.model_copy(update={"batch_size": 4}), workdir, 26)
    one = run_ranks(1, class_model, workdir, tmp_path / "one")
    two = run_ranks(2, class_model, workdir, tmp_path / "two")
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["features"].keys() == two["features"].keys() == {"feat", "logits_unbiased"}
    for layer, features in one["features"].items():
        assert features.shape[0] == 26
        assert torch.equal(features, two["features"][layer]), layer
    assert {"fid_domain", "kid_domain", "precision_domain", "recall_domain", "is_domain",
            "cond_accuracy"} <= one["metrics"].keys()
    assert one["metrics"] == two["metrics"]
    samples_one = np.load(tmp_path / "one" / "samples.npz", allow_pickle=False)["arr_0"]
    samples_two = np.load(tmp_path / "two" / "samples.npz", allow_pickle=False)["arr_0"]
    assert samples_one.shape == (26, 16, 16, 3) and np.array_equal(samples_one, samples_two)


def test_samples_npz_holds_the_streamed_samples_in_order(class_model: Path, workdir: Path, tmp_path: Path) -> None:
    pipeline = LatentDiffusionPipeline.from_checkpoint(class_model)
    evaluation = pipeline.config.evaluation.model_copy(update={"num_samples": 11, "batch_size": 4})
    sampling = pipeline.config.diffusion.sampling
    scorer = prepare_scorer(pipeline.config.data, evaluation, workdir, evaluation.num_samples)
    conditions = draw_conditions(pipeline, evaluation, workdir)
    path = tmp_path / "samples.npz"
    report = sample_metrics(pipeline, conditions, scorer, sampling, workdir, npz=path)
    images = torch.cat([batch.images for batch in sample_batches(
        pipeline, conditions.inputs, 11, sampling, evaluation.seed, 4, Ranks())])
    with np.load(path, allow_pickle=False) as npz:
        assert npz.files == ["arr_0"]
        arr = npz["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (11, 16, 16, 3)
    assert np.array_equal(arr, images.permute(0, 2, 3, 1).numpy())
    assert report["meta"]["samples_npz"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]  # no temp file left behind


def test_evaluate_experiment_on_two_ranks_reports_what_one_does(class_model: Path, workdir: Path,
                                                                tmp_path: Path) -> None:
    one = run_ranks(1, class_model, workdir, tmp_path / "one", "experiment")
    two = run_ranks(2, class_model, workdir, tmp_path / "two", "experiment")
    machine_dependent = {"sample_images_per_s", "peak_memory_mb", "meta"}
    assert {"fid_domain", "kid_domain", "is_domain", "cond_accuracy", "rfid_domain"} <= one.keys()
    assert {k: v for k, v in one.items() if k not in machine_dependent} == {
        k: v for k, v in two.items() if k not in machine_dependent}
    assert one["meta"]["num_samples"] == two["meta"]["num_samples"] == 20
    assert one["meta"]["ranks"] == 1 and two["meta"]["ranks"] == 2  # it did join the job torchrun's variables name
