"""Images per second through each feature extractor, and through the whole generation evaluation.

Extractors (`domain`: the small CNN trained on the dataset, on first use; `inception`: torch-fidelity's weights
when present, else the TorchScript TF-Inception) are timed batch by batch, interleaved, on N uint8 MNIST images.
The whole evaluation is `evaluation.generation.compute_generation_metrics` (FID, KID, precision/recall, IS where
available) on N images standing in for samples, once cold (reference features computed: 2N images through the
extractor) and once warm (reference features cached); sampling itself is timed by the other benchmarks. On the CPU
the end-to-end N defaults to 200, as the Inception takes about 0.1 s per image on 2 cores.

    python -m bench.eval_throughput                               # N = 1000 per extractor, 200 end-to-end
    python -m bench.eval_throughput --device cuda --eval-n 1000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from bench.harness import (
    Report,
    Row,
    add_common_arguments,
    interleaved_times,
    run_script,
    setup,
)
from evaluation.extractors.resolve import resolve_extractor
from evaluation.generation import compute_generation_metrics
from ldm.config import DataConfig, EvaluationConfig, ExtractorName
from ldm.data.registry import build_dataset
from ldm.errors import UserError
from ldm.paths import cache_dir, resolve_workdir

# Where compute_generation_metrics caches reference features (see evaluation.reference.cached_reference_features);
# cleared before the cold run, and checked to be filled by it.
REFERENCE_CACHE = "reference"


def uint8_images(data: DataConfig, n: int, workdir: Path) -> torch.Tensor:
    """The first n train images as uint8 (n, 3, H, W), the input every extractor takes."""
    dataset = build_dataset(data, "train", workdir)
    if len(dataset) < n:
        raise UserError(f"--n={n} exceeds the {len(dataset)} train images of {data.name}; allowed: <= {len(dataset)}")
    return torch.stack([dataset.uint8_image(i).expand(3, -1, -1) for i in range(n)])


def extractor_case(name: ExtractorName, data: DataConfig, workdir: Path, images: torch.Tensor, batch_size: int,
                   device: torch.device) -> Callable[[], None]:
    """Feature extraction of the next batch of `images` (cycling) through the named extractor."""
    resolved = resolve_extractor(name, data, workdir)
    kwargs = resolved.fidelity_kwargs()
    fidelity_name = kwargs.pop("feature_extractor")
    feature = FEATURE_EXTRACTORS_REGISTRY[fidelity_name].get_default_feature_layer_for_metric("fid")
    extractor = create_feature_extractor(fidelity_name, [feature], cuda=device.type == "cuda", verbose=False,
                                         **kwargs)
    batches = _cycle(images.split(batch_size))

    @torch.no_grad()
    def run() -> None:
        extractor(next(batches).to(device))

    return run


def _cycle(batches: tuple[torch.Tensor, ...]) -> Iterator[torch.Tensor]:
    while True:
        yield from batches


def time_end_to_end(images: torch.Tensor, data: DataConfig, extractor: ExtractorName, batch_size: int,
                    workdir: Path) -> Row:
    """Seconds of compute_generation_metrics with one extractor, cold then warm."""
    evaluation = EvaluationConfig(num_samples=len(images), extractors=[extractor], batch_size=batch_size)
    reference_cache = cache_dir(workdir) / REFERENCE_CACHE
    shutil.rmtree(reference_cache, ignore_errors=True)
    seconds = []
    for _ in ("cold", "warm"):
        start = time.perf_counter()
        metrics = compute_generation_metrics(images, data, evaluation, workdir)
        seconds.append(time.perf_counter() - start)
        if not reference_cache.is_dir() or not any(reference_cache.iterdir()):
            raise RuntimeError(f"no reference features were cached under {reference_cache}: the cache moved, so "
                               "the cold/warm split of this benchmark no longer holds; update REFERENCE_CACHE")
    n = len(images)
    return {"extractor": extractor, "n": n, "cold_s": round(seconds[0], 1), "cold_img_s": round(n / seconds[0], 1),
            "warm_s": round(seconds[1], 1), "warm_img_s": round(n / seconds[1], 1),
            "fid": round(float(metrics[f"fid_{extractor}"]), 3)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1)
    parser.add_argument("--n", type=int, default=1000, help="images per extractor")
    parser.add_argument("--eval-n", type=int, default=200, help="images for the whole evaluation (CPU default 200)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=32, help="MNIST side (the domain CNN is trained at it)")
    parser.add_argument("--extractors", nargs="+", choices=get_args(ExtractorName),
                        default=list(get_args(ExtractorName)))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    report = Report("eval_throughput", args, device)
    # A workdir of its own: the domain classifier is trained there once, and its reference cache can be cleared.
    workdir = resolve_workdir(args.workdir) / "bench" / "eval_workdir"
    data = DataConfig(name="mnist", resolution=args.resolution, channels=1)
    images = uint8_images(data, max(args.n, args.eval_n), workdir)

    print("preparing extractors (the domain classifier trains on first use) ...", file=sys.stderr, flush=True)
    cases = {name: extractor_case(name, data, workdir, images[: args.n], args.batch_size, device)
             for name in args.extractors}
    batches = -(-args.n // args.batch_size)
    times = interleaved_times(cases, device, repeats=batches * args.repeats, warmup=args.warmup)
    rows = [{"extractor": name, "n": args.n, "batch": args.batch_size, "total_s": round(sum(seconds), 1),
             "img_s": round(len(seconds) * args.batch_size / sum(seconds), 1),
             "img_s_median_batch": round(args.batch_size / statistics.median(seconds), 1)}
            for name, seconds in times.items()]
    report.details["batch_seconds"] = times
    report.table(f"Feature extraction, {args.resolution}x{args.resolution} MNIST as uint8 RGB, batches interleaved",
                 rows)

    print("whole evaluation, cold then warm ...", file=sys.stderr, flush=True)
    end_to_end = [time_end_to_end(images[: args.eval_n], data, name, args.batch_size, workdir)
                  for name in args.extractors]
    if device.type == "cpu" and args.eval_n < args.n:
        report.note(f"whole evaluation on {args.eval_n} images (not {args.n}) to keep the CPU run short")
    report.note("whole evaluation = compute_generation_metrics (FID, KID, precision/recall, IS if the extractor has "
                "logits) of train images against the test split; cold computes the reference features, warm reads "
                "them from the cache; sampling is not included")
    report.table("Whole generation evaluation (seconds and images per second)", end_to_end)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
