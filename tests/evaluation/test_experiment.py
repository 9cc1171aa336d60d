"""`evaluate_experiment` and `ldm eval` on tiny trained models: every metric family lands in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from evaluation.cost import cpu_peak_resettable
from evaluation.experiment import draw_conditions, evaluate_experiment, intermediate_fid
from evaluation.extractors.domain import load_domain_extractor
from evaluation.generation import compute_generation_metrics, conditioning_accuracy
from evaluation.metric_catalog import metric_info
from evaluation.protocol import protocol_fingerprint
from evaluation.sampling import batch_generator, sample_batches
from ldm.config import EvaluationConfig, Override, load_config
from ldm.data.registry import build_dataset
from ldm.distributed import Ranks
from ldm.errors import UserError
from ldm.diffusion.conditioning import ConditionInputs
from ldm.paths import WORKDIR_ENV
from ldm.tracking import NullTracker, Tag
from ldm.training.diffusion_stage import train_diffusion
from ldm.training.pipeline import LatentDiffusionPipeline
from ldm_cli.main import app


def streamed(pipeline: LatentDiffusionPipeline, inputs: ConditionInputs, evaluation: EvaluationConfig) -> torch.Tensor:
    """The evaluation's samples as one tensor, from the same stream the metrics read."""
    return torch.cat([batch.images for batch in sample_batches(
        pipeline, inputs, evaluation.num_samples, pipeline.config.diffusion.sampling, evaluation.seed,
        evaluation.batch_size, Ranks())])


def test_every_metric_family_with_guidance_and_ddim_variants(class_model: Path, workdir: Path) -> None:
    out = workdir / "class-metrics.json"
    report = evaluate_experiment(None, class_model, workdir, overrides=[
        Override("evaluation.guidance_scales", [1.0, 3.0]), Override("evaluation.ddim_steps", [1]),
        Override("evaluation.samples_npz", True)], out=out)
    written = json.loads(out.read_text())
    # One ADM sample batch per variant beside metrics.json; the base-scale guidance variant repeats the samples
    # (micro has no attention, so its context, and guidance, change nothing: fewer steps are what differs).
    batches = {name: np.load(workdir / f"{name}.npz", allow_pickle=False)["arr_0"]
               for name in ("samples", "samples-g1", "samples-g3", "samples-ddim1")}
    assert all(arr.shape == (20, 16, 16, 3) and arr.dtype == np.uint8 for arr in batches.values())
    assert np.array_equal(batches["samples"], batches["samples-g1"])
    assert not np.array_equal(batches["samples"], batches["samples-ddim1"])
    assert written["meta"]["samples_npz"] == str(workdir / "samples.npz")
    assert set(written) == set(report)
    for name in ["fid_domain", "kid_domain", "precision_domain", "recall_domain", "is_domain", "cond_accuracy",
                 "rfid_domain", "psnr", "ssim", "bpp", "params_unet", "params_cond", "unet_gflops",
                 "sample_images_per_s", "peak_memory_mb", "g3/fid_domain", "g3/cond_accuracy",
                 "ddim1/fid_domain", "ddim1/sample_images_per_s", "fdinf_domain", "fdinf_domain_lo", "fid_domain_lo",
                 "fid_domain_hi", "kid_domain_lo", "recall_domain_hi", "is_domain_lo", "g3/fid_domain_hi"]:
        assert isinstance(written[name], float), name
        metric_info(name)  # every logged name is a catalog metric or one of its variants
    assert 0.0 <= written["cond_accuracy"] <= 100.0
    # Guidance variants sample the same conditions with the same seed: at the base scale they repeat its numbers.
    assert written["g1/fid_domain"] == written["fid_domain"]
    assert written["g1/cond_accuracy"] == written["cond_accuracy"]
    assert written["params_cond"] > 0
    meta = written["meta"]
    assert meta["num_samples"] == 20 and meta["steps"] == 2 and "domain" in meta["extractor_weights"]
    assert "kid_subset_size" in meta
    # The bootstrap replicates (100 by default) beside metrics.json, not in it, for every variant too.
    assert "bootstrap" not in meta and meta["bootstrap_replicates"] == 100
    replicates = json.loads((workdir / "bootstrap.json").read_text())
    assert {"fid_domain", "fdinf_domain", "precision_domain", "g3/fid_domain", "ddim1/kid_domain"} <= set(replicates)
    assert all(len(values) == (30 if "fdinf" in name else 100) for name, values in replicates.items())


def test_peak_memory_is_the_evaluations_not_the_processes(class_model: Path, workdir: Path) -> None:
    if torch.cuda.is_available() or not cpu_peak_resettable():
        pytest.skip("needs a CPU evaluation whose peak resets (Linux); tests/evaluation/test_cost.py covers CUDA")
    earlier = torch.ones(1024 * 2**20 // 4)  # 1 GiB, as a trial's training holds before its evaluation
    del earlier
    process_peak = _vm_hwm_mb()
    report = evaluate_experiment(None, class_model, workdir, out=workdir / "memory.json")
    assert report["peak_memory_mb"] < process_peak - 512


def _vm_hwm_mb() -> float:
    """The kernel's high-water mark of this process's resident set."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_same_seed_same_numbers(class_model: Path, workdir: Path) -> None:
    first = evaluate_experiment(None, class_model, workdir, out=workdir / "a.json")
    second = evaluate_experiment(None, class_model, workdir, out=workdir / "b.json")
    for name in ("fid_domain", "kid_domain", "cond_accuracy", "psnr"):
        assert first[name] == second[name], name


def test_the_run_gets_the_protocol_fingerprint_and_the_bootstrap_and_protocol_artifacts(class_model: Path,
                                                                                     workdir: Path) -> None:
    tags: dict[str, str] = {}
    artifacts: list[tuple[str, str | None]] = []

    class Recorder(NullTracker):
        def set_tags(self, values: dict[str, str]) -> None:
            tags.update(values)

        def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
            artifacts.append((Path(path).name, artifact_path))

    out = workdir / "tracked" / "metrics.json"
    out.parent.mkdir()
    report = evaluate_experiment(None, class_model, workdir, Recorder(), out=out)
    protocol = json.loads((out.parent / "protocol.json").read_text())
    assert tags[Tag.EVAL_PROTOCOL] == protocol_fingerprint(protocol) == report["meta"]["eval_protocol"]
    assert protocol["num_samples"] == 20 and protocol["extractors"][0]["name"] == "domain"
    assert {("metrics.json", None), ("bootstrap.json", "evaluation"), ("protocol.json", "evaluation")} <= set(artifacts)


def test_text_model_is_evaluated_with_the_labels_of_its_prompts(workdir: Path) -> None:
    checkpoint = train_diffusion(load_config(preset="micro", overrides=[Override("diffusion.conditioning", "text")]),
                                 workdir)
    pipeline = LatentDiffusionPipeline.from_checkpoint(checkpoint)
    drawn = draw_conditions(pipeline, pipeline.config.evaluation, workdir)
    prompts, labels = drawn.inputs.prompts, drawn.target_labels
    assert prompts is not None and labels is not None and drawn.inputs.labels is None
    assert len(prompts) == len(labels) == pipeline.config.evaluation.num_samples
    for prompt, label in zip(prompts, labels, strict=True):
        assert pipeline.dataset.class_names[int(label)] in prompt
    report = evaluate_experiment(None, checkpoint, workdir, out=workdir / "text.json")
    images = streamed(pipeline, drawn.inputs, pipeline.config.evaluation)
    classifier = load_domain_extractor(pipeline.config.data, workdir)
    assert report["cond_accuracy"] == conditioning_accuracy(images, labels, classifier)


def test_inpainting_model_is_evaluated_on_masked_reference_images(workdir: Path) -> None:
    checkpoint = train_diffusion(load_config(preset="micro", overrides=[Override("diffusion.conditioning", "concat")]),
                                 workdir)
    report = evaluate_experiment(None, checkpoint, workdir, out=workdir / "concat.json")
    assert "cond_accuracy" not in report
    # The FID is that of the model inpainting the reference images' own masked regions.
    pipeline = LatentDiffusionPipeline.from_checkpoint(checkpoint)
    evaluation = pipeline.config.evaluation
    drawn = draw_conditions(pipeline, evaluation, workdir)
    assert drawn.inputs.masked_images is not None and drawn.inputs.masks is not None and drawn.target_labels is None
    images = streamed(pipeline, drawn.inputs, evaluation)
    expected = compute_generation_metrics(images, pipeline.config.data, evaluation, workdir)
    assert report["fid_domain"] == expected["fid_domain"]


def test_eval_cli_prints_the_table_and_writes_json(class_model: Path, workdir: Path) -> None:
    out = workdir / "cli.json"
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "eval", "--checkpoint", str(class_model),
                                      "--num-samples", "12", "--steps", "1", "--guidance", "2",
                                      "--guidance-sweep", "1,2.5", "--out", str(out)],
                                env={WORKDIR_ENV: str(workdir)})
    assert result.exit_code == 0, result.output
    assert "FID (domain)" in result.output and f"wrote {out}" in result.output
    written = json.loads(out.read_text())
    meta = written["meta"]
    assert meta["num_samples"] == 12 and meta["steps"] == 1 and meta["guidance_scale"] == 2.0
    assert {"g1/fid_domain", "g2.5/fid_domain"} <= written.keys()


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint", "missing.pt"], "checkpoint 'missing.pt' does not exist"),
    (["--checkpoint", "{ckpt}", "--extractor", "clip"], "--extractor 'clip' is not a comma-separated list of"),
    (["--checkpoint", "{ckpt}", "--guidance-sweep", "1,x"],
     "--guidance-sweep '1,x' is not a comma-separated list of numbers, e.g. 1,2,4"),
])
def test_eval_cli_errors(class_model: Path, workdir: Path, args: list[str], message: str) -> None:
    args = [a.replace("{ckpt}", str(class_model)) for a in args]
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "eval", *args], env={WORKDIR_ENV: str(workdir)})
    assert result.exit_code == 1
    assert message in result.output


def test_intermediate_fid_is_logged_every_fid_every_steps(workdir: Path) -> None:
    logged: list[tuple[int | None, dict[str, float]]] = []
    reported: list[tuple[str, int]] = []

    class Recorder(NullTracker):
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            logged.append((step, metrics))

    cfg = load_config(preset="micro", overrides=[
        Override("evaluation.fid_every", 2), Override("evaluation.fid_every_samples", 10), Override("training.seed", 1)])
    checkpoint = train_diffusion(cfg, workdir, Recorder(),
                                 on_eval=lambda name, value, step: reported.append((name, step)),
                                 intermediate=intermediate_fid(cfg, workdir))
    assert [step for step, metrics in logged if "fid_domain" in metrics] == [2, 4]
    # The last one was measured on the final EMA weights, which the checkpoint holds.
    final = LatentDiffusionPipeline.from_checkpoint(checkpoint)
    last = [metrics for _, metrics in logged if "fid_domain" in metrics][-1]
    assert intermediate_fid(cfg, workdir)(final)["fid_domain"] == last["fid_domain"]
    assert [r for r in reported if r[0] == "fid_domain"] == [("fid_domain", 2), ("fid_domain", 4)]


def test_eval_refuses_more_samples_than_the_reference_split_before_generating(
        class_model: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def generate(*args: object, **kwargs: object) -> None:
        raise AssertionError("generated before the sample count was checked")

    monkeypatch.setattr(LatentDiffusionPipeline, "sample_batch", generate)
    split = len(build_dataset(load_config(preset="micro").data, "test", workdir))
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "eval", "--checkpoint", str(class_model),
                                      "--num-samples", str(split + 1)], env={WORKDIR_ENV: str(workdir)})
    assert result.exit_code == 1, result.output
    assert result.output == (f"Error: evaluation.num_samples={split + 1} exceeds the {split} images of reference split "
                             f"'test'; allowed: <= {split}, or another evaluation.reference_split\n")


def test_bad_reference_stats_fail_before_sampling(class_model: Path, workdir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def sample(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampled before the reference statistics were checked")

    monkeypatch.setattr(LatentDiffusionPipeline, "sample_batch", sample)
    bad = workdir / "inception-sized.npz"
    np.savez(bad, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(UserError, match=rf"^evaluation.reference_stats='{bad}' holds mu \(2048,\) and sigma "):
        evaluate_experiment(None, class_model, workdir, overrides=[Override("evaluation.reference_stats", str(bad))])


def test_intermediate_fid_refuses_more_samples_than_the_reference_split_before_training(workdir: Path) -> None:
    cfg = load_config(preset="micro", overrides=[Override("evaluation.fid_every", 2)])
    split = len(build_dataset(cfg.data, "val", workdir))
    cfg = load_config(preset="micro", overrides=[Override("evaluation.fid_every", 2),
                                                 Override("evaluation.reference_split", "val"),
                                                 Override("evaluation.fid_every_samples", split + 1)])
    with pytest.raises(UserError, match=rf"^evaluation.fid_every_samples={split + 1} exceeds the {split} images of "
                                        rf"reference split 'val'; allowed: <= {split}"):
        intermediate_fid(cfg, workdir)
    assert intermediate_fid(load_config(preset="micro"), workdir) is None  # no fid_every: nothing to check


def test_each_batch_is_the_pipelines_own_pixels_from_its_own_seed(class_model: Path) -> None:
    pipeline = LatentDiffusionPipeline.from_checkpoint(class_model)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    evaluation = pipeline.config.evaluation.model_copy(update={"num_samples": 6, "batch_size": 4, "seed": 5})
    images = streamed(pipeline, ConditionInputs(labels=labels), evaluation)
    for batch, part in enumerate([slice(0, 4), slice(4, 6)]):
        direct = pipeline.generate(part.stop - part.start, conditions=ConditionInputs(labels=labels[part]),
                                   generator=batch_generator(5, batch), batch_size=4)
        assert torch.equal(images[part], direct.expand(-1, 3, -1, -1))
    other_seed = pipeline.generate(2, conditions=ConditionInputs(labels=labels[4:]), generator=batch_generator(5, 0))
    assert not torch.equal(images[4:], other_seed.expand(-1, 3, -1, -1))
