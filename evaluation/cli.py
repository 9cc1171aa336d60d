"""`ldm eval`: every metric of a trained diffusion checkpoint, printed and written to metrics.json; `ldm eval ref`:
the reference statistics of a dataset split, written to a file other runs (and other tools) can use."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ldm.commands.options import URI_HELP, ConfigOption, OverrideOption, PresetOption
from ldm.errors import UserError

EXTRACTORS = ("inception", "domain")

app = typer.Typer(help="Evaluate a trained model (`ldm eval --checkpoint ...`), or write reference statistics "
                  "(`ldm eval ref`).", invoke_without_command=True)


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


@app.callback()
def eval_command(
    ctx: typer.Context,
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=f"A diffusion.pt from `ldm train`; {URI_HELP}"),
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
    if ctx.invoked_subcommand is not None:
        return
    if checkpoint is None:
        raise UserError("ldm eval needs --checkpoint PATH (a diffusion.pt from `ldm train`), or the command ref")
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


@app.command("ref")
def ref_command(
    out: Path = typer.Option(..., "--out", help="The statistics file (npz: mu, sigma, protocol[, features])."),
    config: Optional[Path] = ConfigOption,
    preset: Optional[str] = PresetOption,
    override: list[str] = OverrideOption,
    extractor: Optional[str] = typer.Option(None, "--extractor", help="One of inception, domain (default: config)."),
    split: Optional[str] = typer.Option(None, "--split", help="Reference split (default: evaluation.reference_split)."),
    num: Optional[int] = typer.Option(None, "--num", "-n", help="Images (default: evaluation.num_reference, else "
                                      "evaluation.num_samples)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the reference order (default: evaluation.seed)."),
    features: bool = typer.Option(False, "--features", help="Also store the features (KID and precision/recall "
                                  "need them)."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights",
                                                     help="torch-fidelity inception-v3-compat weights file."),
) -> None:
    """Reference statistics (float64 mu, sigma) of the first N images of a split in a seeded order, with protocol."""
    from ldm.commands.options import resolve_config
    from ldm.config import Override, build_config
    from ldm.paths import resolve_workdir

    from evaluation.reference import write_reference_stats

    cfg = resolve_config(config, preset, override)
    names = _extractors(extractor) if extractor else cfg.evaluation.extractors
    if len(names) != 1:
        raise UserError(f"--extractor '{','.join(names)}' names {len(names)} extractors; allowed: exactly one")
    overrides = [Override(path, value) for path, value in {
        "evaluation.extractors": names, "evaluation.reference_split": split, "evaluation.num_reference": num,
        "evaluation.seed": seed, "evaluation.inception_weights": inception_weights,
    }.items() if value is not None]
    cfg = build_config(cfg.model_dump(mode="json"), overrides)
    protocol = write_reference_stats(cfg.data, cfg.evaluation, out, resolve_workdir(), with_features=features)
    typer.echo(f"wrote {out}: {protocol['num_reference']} images of {protocol['dataset']}/{protocol['split']} "
               f"through {protocol['extractor']} ({protocol['extractor_weights']})")
