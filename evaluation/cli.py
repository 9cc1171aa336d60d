"""`ldm eval`: every metric of a trained diffusion checkpoint, printed and written to metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ldm.commands.options import URI_HELP
from ldm.errors import UserError

EXTRACTORS = ("inception", "domain")


def _extractors(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXTRACTORS]
    if not names or unknown:
        raise UserError(f"--extractor '{text}' is not a comma-separated list of {', '.join(EXTRACTORS)}")
    return names


def _scales(text: str) -> list[float]:
    try:
        return [float(scale) for scale in text.split(",")]
    except ValueError:
        raise UserError(f"--guidance-sweep '{text}' is not a comma-separated list of numbers, e.g. 1,2,4") from None


def eval_command(
    checkpoint: str = typer.Option(..., "--checkpoint", help=f"A diffusion.pt from `ldm train`; {URI_HELP}"),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Generated images (default: config)."),
    extractor: Optional[str] = typer.Option(None, "--extractor", help="Comma-separated: inception,domain."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: config)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM eta."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    guidance_sweep: Optional[str] = typer.Option(None, "--guidance-sweep", help="Extra scales, e.g. 1,2,4."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights",
                                                     help="torch-fidelity inception-v3-compat weights file."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling and reference-order seed."),
    out: Optional[Path] = typer.Option(None, "--out", help="metrics.json path (default: beside the checkpoint)."),
) -> None:
    """FID/KID/precision/recall/IS, conditioning accuracy, rFID/PSNR/SSIM/bpp and cost of a trained model.

    Inside a tracked run (MLFLOW_RUN_ID set) the metrics are logged to it as well.
    """
    from evaluation.experiment import evaluate_experiment
    from evaluation.report_card import format_metrics_table
    from ldm.artifacts import local_checkpoint
    from ldm.config import Override
    from ldm.paths import resolve_workdir
    from ldm.tracking.runs import active_run_tracker

    overrides = [Override(path, value) for path, value in {
        "evaluation.num_samples": num_samples, "evaluation.seed": seed, "diffusion.sampling.steps": steps,
        "diffusion.sampling.eta": eta, "diffusion.sampling.guidance_scale": guidance,
        "evaluation.extractors": _extractors(extractor) if extractor else None,
        "evaluation.guidance_scales": _scales(guidance_sweep) if guidance_sweep else None,
        "evaluation.inception_weights": inception_weights,
    }.items() if value is not None]
    workdir = resolve_workdir()
    local = local_checkpoint(checkpoint, workdir)
    if not local.is_file():
        raise UserError(f"checkpoint '{checkpoint}' does not exist; give a diffusion.pt written by `ldm train`")
    path = out or local.parent / "metrics.json"
    report = evaluate_experiment(None, local, workdir, active_run_tracker(workdir), overrides=overrides, out=path)
    typer.echo(format_metrics_table(report))
    typer.echo(f"wrote {path}")
