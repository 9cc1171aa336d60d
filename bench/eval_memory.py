"""Peak memory of generating and scoring N samples: the streaming evaluation against concatenating every image.

Each (path, N) runs in a fresh process, so no peak carries over: an untrained pipeline of the `tiny` preset (memory
does not depend on the weights), the `domain` extractor, reference features cached beforehand by this process.
Per run: the process's peak RSS (`resource.getrusage` ru_maxrss) and the peak above the RSS once the model and
extractor are loaded (the kernel's high-water mark, reset there: `evaluation.cost.PeakMemory`), since torch's
baseline dominates. `stream` is `evaluation.experiment.sample_metrics` (batches into the extractors, features
kept); `concat` is the old path: `pipeline.generate` keeps every decoded batch, then the images are scored. The
target is a flat streaming peak: at most 1.2x from the smallest to the largest N.

    python -m bench.eval_memory                                   # N = 64, 512, 4096 at 16 px
    python -m bench.eval_memory --resolution 64                   # images large enough to see the old path grow
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from bench.harness import Report, Row, add_common_arguments, positive_ints, run_script, setup
from evaluation.cost import PeakMemory
from evaluation.experiment import draw_conditions, sample_metrics
from evaluation.extractors import to_uint8_rgb
from evaluation.generation import prepare_scorer, score_images
from ldm.config import ExperimentConfig, Override, load_config
from ldm.diffusion.conditioning import DatasetInfo, DatasetSummary
from ldm.diffusion.process import GaussianDiffusion
from ldm.errors import UserError
from ldm.first_stage import build_first_stage
from ldm.paths import resolve_workdir
from ldm.training.pipeline import LatentDiffusionPipeline, build_denoiser

PATHS = ("stream", "concat")
TARGET_RATIO = 1.2


def bench_config(args: argparse.Namespace, n: int) -> ExperimentConfig:
    return load_config(preset="tiny", overrides=[
        Override("data.resolution", args.resolution), Override("data.channels", args.channels),
        Override("diffusion.sampling.steps", args.steps), Override("evaluation.num_samples", n),
        Override("evaluation.batch_size", args.batch), Override("evaluation.extractors", ["domain"])])


def untrained_pipeline(cfg: ExperimentConfig) -> LatentDiffusionPipeline:
    """The preset's first stage and UNet at their seeded initialisation, unconditional, on the CPU."""
    torch.manual_seed(0)
    first_stage = build_first_stage(cfg.autoencoder, image_channels=cfg.data.channels)
    denoiser = build_denoiser(cfg, DatasetInfo(latent_shape=first_stage.latent_shape(cfg.data.resolution)))
    for module in (first_stage, denoiser):
        module.eval().requires_grad_(False)
    return LatentDiffusionPipeline(first_stage=first_stage, denoiser=denoiser,
                                   diffusion=GaussianDiffusion.from_config(cfg.diffusion), scale_factor=1.0,
                                   config=cfg, dataset=DatasetSummary([], [], [], []), device=torch.device("cpu"))


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """One measurement, printed as a JSON line: this process exists for it alone."""
    n, path = args.child_n, args.child_path
    cfg = bench_config(args, n)
    workdir = resolve_workdir(args.workdir)
    pipeline = untrained_pipeline(cfg)
    scorer = prepare_scorer(cfg.data, cfg.evaluation, workdir, n)  # reference features: cached
    conditions = draw_conditions(pipeline, cfg.evaluation, workdir)
    loaded_maxrss = _maxrss_mb()
    memory = PeakMemory(torch.device("cpu"))  # high-water mark reset to the loaded RSS
    start = time.perf_counter()
    if path == "stream":
        report = sample_metrics(pipeline, conditions, scorer, cfg.diffusion.sampling, workdir)
    else:
        images = pipeline.generate(n, conditions=conditions.inputs, generator=torch.Generator().manual_seed(0),
                                   batch_size=cfg.evaluation.batch_size)
        report = score_images(to_uint8_rgb(images), scorer)
    seconds = time.perf_counter() - start
    peak = memory.peak_mb()
    print(json.dumps({
        "path": path, "N": n, "peak_rss_mb": _maxrss_mb(), "loaded_rss_mb": memory.start_mb,
        "peak_above_loaded_mb": None if peak is None or memory.start_mb is None else peak - memory.start_mb,
        "loaded_maxrss_mb": loaded_maxrss, "seconds": seconds, "fid_domain": report["fid_domain"],
    }))


def measure(args: argparse.Namespace, path: str, n: int) -> Row:
    command = [sys.executable, "-m", "bench.eval_memory", "--child-n", str(n), "--child-path", path,
               "--resolution", str(args.resolution), "--channels", str(args.channels), "--steps", str(args.steps),
               "--batch", str(args.batch), "--threads", str(args.threads)]
    if args.workdir is not None:
        command += ["--workdir", str(args.workdir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(rows: list[Row], key: str) -> float | None:
    first, last = rows[0][key], rows[-1][key]
    return None if first is None or last is None or first <= 0 else last / first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1, warmup=0)
    parser.add_argument("--n", type=positive_ints, default=[64, 512, 4096], help="sample counts (default 64,512,4096)")
    parser.add_argument("--paths", default="stream,concat", help="stream, concat or both (default)")
    parser.add_argument("--resolution", type=int, default=16, help="image side (default 16, the tiny preset's)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=1)
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps (memory does not depend on them)")
    parser.add_argument("--batch", type=int, default=50, help="evaluation.batch_size (default 50, the preset's)")
    parser.add_argument("--child-n", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-path", choices=PATHS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = setup(args)
    if args.child_n is not None:
        child(args)
        return 0
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or set(paths) - set(PATHS):
        raise UserError(f"--paths '{args.paths}' is not a comma-separated list of {', '.join(PATHS)}")
    workdir = resolve_workdir(args.workdir)
    for n in sorted(args.n):  # the domain classifier and each N's reference features, once, outside the measurements
        cfg = bench_config(args, n)
        prepare_scorer(cfg.data, cfg.evaluation, workdir, n)
    report = Report("eval_memory", args, device)
    report.details["images_mb"] = {n: n * 3 * args.resolution**2 / 2**20 for n in args.n}
    for path in paths:
        rows = [measure(args, path, n) for n in sorted(args.n)]
        report.table(f"{path}: peak memory [MiB] by sample count", rows)
        rss, above = ratio(rows, "peak_rss_mb"), ratio(rows, "peak_above_loaded_mb")
        report.details[path] = {"peak_rss_ratio": rss, "peak_above_loaded_ratio": above}
        report.note(f"{path}: N={rows[-1]['N']} / N={rows[0]['N']}: peak RSS x{rss:.3f}, peak above the loaded RSS "
                    f"x{above:.3f}" if rss is not None and above is not None else f"{path}: ratio unknown")
    if "stream" in paths:
        flat = report.details["stream"]["peak_rss_ratio"]
        report.note(f"target: streaming peak RSS flat within x{TARGET_RATIO}: "
                    f"{'met' if flat is not None and flat <= TARGET_RATIO else 'NOT met'}")
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
