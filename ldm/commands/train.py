"""`ldm train`, `ldm sample`, `ldm eval-ae`: train both stages, draw samples, measure a first stage."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import typer
from pydantic import ValidationError

from ldm.artifacts import local_checkpoint
from ldm.commands.options import URI_HELP, ConfigOption, OverrideOption, PresetOption, resolve_config
from ldm.config import ExperimentConfig, SamplingConfig, format_validation_error
from ldm.errors import ConfigError, UserError
from ldm.paths import resolve_workdir
from ldm.tracking import NullTracker

# torch, MLflow and the training modules are imported inside the commands: `ldm --help` stays instant.
if TYPE_CHECKING:
    import torch

# Inpainting box of `ldm sample --mask-from`: the centre cell of the shapes dataset, as fractions of the side.
DEFAULT_MASK_BOX = "0.25,0.25,0.75,0.75"


def train(
    config: Optional[Path] = ConfigOption,
    preset: Optional[str] = PresetOption,
    override: list[str] = OverrideOption,
    stage: Literal["all", "autoencoder", "diffusion"] = typer.Option(
        "all", "--stage", help="autoencoder: the first stage (reused when its hash exists); diffusion: the "
        "diffusion model on --first-stage or on this config's first stage (trained if missing); all: both."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the diffusion stage from its checkpoint, exactly (an unfinished first "
        "stage always continues from its own)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train the first stage even if one with its hash exists."),
    first_stage: Optional[Path] = typer.Option(
        None, "--first-stage", help="First-stage checkpoint to use (with --stage diffusion)."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow."),
) -> None:
    """Train the first stage and/or the diffusion model of a config; prints the checkpoint paths.

    Under `torchrun` every rank trains its share of each batch; rank 0 alone logs and writes.
    """
    from ldm.distributed import init_distributed
    from ldm.tracking.runs import tracked_run
    from ldm.training.autoencoder_stage import train_autoencoder
    from ldm.training.diffusion_stage import train_diffusion

    cfg = resolve_config(config, preset, override)
    if first_stage is not None and stage != "diffusion":
        raise UserError(f"--first-stage is used with --stage diffusion only, not --stage {stage}")
    if first_stage is not None and not first_stage.is_file():
        raise UserError(f"first-stage checkpoint '{first_stage}' does not exist")
    if retrain and stage == "diffusion":
        raise UserError("--retrain retrains the first stage; allowed with --stage all or --stage autoencoder")
    workdir = resolve_workdir()
    ranks = init_distributed()
    tracked = cfg.tracking.enabled and not no_track and ranks.is_main
    echo = typer.echo if ranks.is_main else _silent
    with tracked_run(cfg, workdir) if tracked else contextlib.nullcontext(NullTracker()) as tracker:
        if stage == "diffusion":
            diffusion = train_diffusion(cfg, workdir, tracker, first_stage_ckpt=first_stage, resume=resume)
            echo(f"diffusion checkpoint: {diffusion}")
            return
        autoencoder = train_autoencoder(cfg, workdir, tracker, retrain=retrain)
        echo(f"first-stage checkpoint: {autoencoder}")
        if stage == "all":
            diffusion = train_diffusion(cfg, workdir, tracker, first_stage_ckpt=autoencoder, resume=resume)
            echo(f"diffusion checkpoint: {diffusion}")


def _silent(message: str) -> None:
    """Where ranks other than 0 print: nowhere, so a job's output reads as one process's."""


def sample(
    checkpoint: str = typer.Option(..., "--checkpoint", help=f"A diffusion.pt from `ldm train`; {URI_HELP}"),
    n: int = typer.Option(64, "--n", min=1, help="Number of images."),
    steps: int = typer.Option(50, "--steps", min=1, help="Sampler steps (DDIM; DDPM always runs all)."),
    eta: float = typer.Option(0.0, "--eta", min=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like."),
    sampler: Literal["ddim", "ddpm"] = typer.Option("ddim", "--sampler"),
    guidance: float = typer.Option(1.0, "--guidance", min=0.0, help="Classifier-free guidance scale; 1 = off."),
    label: Optional[int] = typer.Option(None, "--label", help="Class of every image (class models)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Caption of every image (text models)."),
    mask_from: Optional[Path] = typer.Option(
        None, "--mask-from", help="Image to inpaint (concat models) inside --mask-box."),
    mask_box: str = typer.Option(
        DEFAULT_MASK_BOX, "--mask-box", help="Region to inpaint: x0,y0,x1,y1 as fractions of the image side."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Grid image (default <workdir>/samples/grid.png)."),
    save_individual: Optional[Path] = typer.Option(None, "--save-individual", help="Also write each image here."),
) -> None:
    """Draw images from a trained model: a grid, and optionally one PNG per image.

    Without --label/--prompt, a conditional model draws its conditions from the training data's frequencies.
    """
    import torch
    from PIL import Image

    from ldm.data.grid import make_grid_image, save_image_atomic
    from ldm.diffusion.conditioning import ConditionInputs
    from ldm.training.device import resolve_device
    from ldm.training.pipeline import LatentDiffusionPipeline

    if label is not None and prompt is not None:
        raise UserError("give either --label or --prompt, not both")
    pipeline = LatentDiffusionPipeline.from_checkpoint(local_checkpoint(checkpoint, resolve_workdir()),
                                                       device=resolve_device("auto"))
    try:
        sampling = SamplingConfig.model_validate({**pipeline.config.diffusion.sampling.model_dump(), "steps": steps,
                                                  "eta": eta, "sampler": sampler, "guidance_scale": guidance})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    masked_images, masks = (_inpainting_input(mask_from, mask_box, pipeline.config, n)
                            if mask_from is not None else (None, None))
    generator = torch.Generator().manual_seed(seed)
    conditions = pipeline.complete_conditions(n, ConditionInputs(
        labels=torch.full((n,), label, dtype=torch.long) if label is not None else None,
        prompts=[prompt] * n if prompt is not None else None, masked_images=masked_images, masks=masks), generator)
    images = pipeline.generate(n, conditions=conditions, sampling=sampling, generator=generator)

    out = out or resolve_workdir() / "samples" / "grid.png"
    save_image_atomic(make_grid_image(images, pipeline.grid_captions(conditions), ncol=8), out)
    typer.echo(f"grid of {n} images: {out}")
    if save_individual is not None:
        for i, image in enumerate(images):
            # Native size and channels: (C, H, W) uint8 -> H x W (grey) or H x W x 3.
            save_image_atomic(Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()),
                              save_individual / f"{i:05d}.png")
        typer.echo(f"{n} images: {save_individual}")


def eval_ae(
    checkpoint: str = typer.Option(
        ..., "--checkpoint", help=f"autoencoder.pt, or a diffusion.pt (its first stage); {URI_HELP}"),
    split: Literal["train", "val", "test"] = typer.Option("test", "--split"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="JSON file (default rate_distortion_<split>.json beside the checkpoint or its download)."),
) -> None:
    """Rate-distortion metrics (PSNR, SSIM, MSE, bpp, latent ratio, codebook use) of a first stage on a split."""
    from ldm.data.registry import build_dataset
    from ldm.io import atomic_write_text
    from ldm.training.autoencoder_stage import load_first_stage, rate_distortion
    from ldm.training.device import resolve_device

    workdir = resolve_workdir()
    path = local_checkpoint(checkpoint, workdir)
    first_stage, _, cfg = load_first_stage(path)
    first_stage.to(resolve_device("auto"))
    metrics = rate_distortion(first_stage, build_dataset(cfg.data, split, workdir), cfg)
    for name, value in metrics.items():
        typer.echo(f"{name}: {value:.6g}")
    out = out or path.with_name(f"rate_distortion_{split}.json")
    atomic_write_text(out, json.dumps(metrics, indent=2))
    typer.echo(f"written: {out}")


def _inpainting_input(path: Path, box: str, cfg: ExperimentConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The image at `path` fitted to the model's size, n times, and the mask of `box` (1 = inpaint)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from ldm.data.base import fit_images, pil_to_uint8

    if not path.is_file():
        raise UserError(f"--mask-from image '{path}' does not exist")
    try:
        pixels = pil_to_uint8(Image.open(path))
    except UnidentifiedImageError:
        raise UserError(f"--mask-from '{path}' is not an image PIL can read") from None
    image = fit_images(pixels[None], cfg.data.resolution, cfg.data.channels).float() / 127.5 - 1
    try:
        x0, y0, x1, y1 = (float(v) for v in box.split(","))
    except ValueError:
        raise UserError(f"--mask-box '{box}' is not four comma-separated numbers x0,y0,x1,y1") from None
    if not 0 <= x0 < x1 <= 1 or not 0 <= y0 < y1 <= 1:
        raise UserError(f"--mask-box '{box}' must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    side = cfg.data.resolution
    mask = torch.zeros(1, 1, side, side)
    mask[..., round(y0 * side):round(y1 * side), round(x0 * side):round(x1 * side)] = 1.0
    return image.expand(n, -1, -1, -1), mask.expand(n, -1, -1, -1)
