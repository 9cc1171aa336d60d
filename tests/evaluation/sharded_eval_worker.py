"""One rank of a sharded evaluation, started by test_sharded_evaluation.py with torchrun's environment variables.

Usage: python sharded_eval_worker.py CHECKPOINT WORKDIR OUT_DIR [experiment]; rank 0 writes OUT_DIR/result.pt (the
gathered features and the report) and OUT_DIR/samples.npz, or with `experiment` OUT_DIR/metrics.json of
`evaluate_experiment`, which joins the job itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from evaluation.experiment import draw_conditions, evaluate_experiment, sample_metrics
from evaluation.features import FeatureStream
from evaluation.generation import prepare_scorer
from evaluation.report_card import metric_values
from evaluation.sampling import sample_batches
from ldm.distributed import current_ranks
from ldm.training.pipeline import LatentDiffusionPipeline

NUM_SAMPLES, BATCH_SIZE = 26, 4  # 7 batches, the last one short: rank 0 makes 4 of them, rank 1 3 and an empty step


def main(checkpoint: Path, workdir: Path, out: Path) -> None:
    torch.set_num_threads(1)  # the same kernels in every process, so equal inputs give equal bits
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    ranks = current_ranks()
    pipeline = LatentDiffusionPipeline.from_checkpoint(checkpoint)
    evaluation = pipeline.config.evaluation.model_copy(update={"num_samples": NUM_SAMPLES, "batch_size": BATCH_SIZE})
    sampling = pipeline.config.diffusion.sampling
    scorer = prepare_scorer(pipeline.config.data, evaluation, workdir, NUM_SAMPLES)
    conditions = draw_conditions(pipeline, evaluation, workdir)
    report = sample_metrics(pipeline, conditions, scorer, sampling, workdir, npz=out / "samples.npz")
    features = FeatureStream(scorer.scored[0].extractor)
    for batch in sample_batches(pipeline, conditions.inputs, NUM_SAMPLES, sampling, evaluation.seed, BATCH_SIZE,
                                ranks):
        features.add(batch.indices, batch.images)
    gathered = features.gathered(ranks)
    if ranks.is_main:
        values = {k: v for k, v in metric_values(report).items() if k != "sample_images_per_s"}
        torch.save({"features": gathered, "metrics": values, "world_size": ranks.world_size}, out / "result.pt")
    if ranks.distributed:
        dist.destroy_process_group()


def experiment(checkpoint: Path, workdir: Path, out: Path) -> None:
    torch.set_num_threads(1)
    evaluate_experiment(None, checkpoint, workdir, out=out / "metrics.json")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    paths = [Path(arg) for arg in sys.argv[1:4]]
    experiment(*paths) if sys.argv[4:] == ["experiment"] else main(*paths)
