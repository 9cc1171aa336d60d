"""Checkpoints across machines: uploaded to a run's artifacts, named by URI, fetched back into the cache.

A checkpoint *reference* is a local path, `runs:/<run id>/<artifact path>` or a tracking server's proxied
`mlflow-artifacts:/<path>`. Both stages upload to the artifact path `checkpoints/` (`autoencoder.pt`,
`diffusion.pt`). A run folder's `checkpoints.txt` holds one `key: value` line per stage, `first_stage:` and
`diffusion:`, each the artifact URI when it was uploaded, else the local path (`CheckpointRecord`). A first
stage's artifact URIs are kept beside it in `autoencoder.pt.uploads.json` (one per tracking store), so runs
that reuse it can name it.

MLflow is imported inside the functions that download: training without tracking never loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ldm.config import LogCheckpoints
from ldm.errors import UserError
from ldm.io import atomic_write_text
from ldm.paths import artifact_cache_dir
from ldm.tracking import Tracker

CHECKPOINTS_ARTIFACT_PATH = "checkpoints"
URI_SCHEMES = ("runs:/", "mlflow-artifacts:/")
RECORD_NAME = "checkpoints.txt"
# Beside a shared first stage: its URI per tracking store, since a `runs:/` URI means something in one store only.
UPLOADS_SUFFIX = ".uploads.json"


def is_artifact_uri(reference: str) -> bool:
    """Whether `reference` names an artifact of a tracking store rather than a local file."""
    return reference.startswith(URI_SCHEMES)


def log_checkpoint(tracker: Tracker, path: Path, mode: LogCheckpoints) -> str:
    """Upload a finished checkpoint to `checkpoints/` unless `mode` is none; its reference (URI, else local path)."""
    uri = tracker.artifact_uri(f"{CHECKPOINTS_ARTIFACT_PATH}/{path.name}") if mode != "none" else None
    if uri is None:
        return str(path)
    tracker.log_artifact(path, CHECKPOINTS_ARTIFACT_PATH)
    return uri


def log_periodic_checkpoint(tracker: Tracker, path: Path, mode: LogCheckpoints) -> None:
    """Upload a periodic checkpoint under `all`, replacing the previous one, so a killed run can resume elsewhere."""
    if mode == "all":
        tracker.log_artifact(path, CHECKPOINTS_ARTIFACT_PATH)


def uploads(checkpoint: Path) -> dict[str, str]:
    """Where a local checkpoint was uploaded: tracking URI -> its artifact URI in that store."""
    beside = _uploads_file(checkpoint)
    return json.loads(beside.read_text()) if beside.is_file() else {}


def upload_of(checkpoint: Path, tracker: Tracker) -> str | None:
    """The checkpoint's artifact URI in the tracker's store; None when it was not uploaded there (or no run)."""
    return uploads(checkpoint).get(tracker.tracking_uri) if tracker.tracking_uri else None


def publish_checkpoint(tracker: Tracker, path: Path, mode: LogCheckpoints, *, replaces: bool) -> None:
    """Upload a finished checkpoint per `mode` and note its URI beside it; `replaces` forgets earlier files' uploads."""
    reference = log_checkpoint(tracker, path, mode)
    known = {} if replaces else uploads(path)
    if is_artifact_uri(reference):
        known[str(tracker.tracking_uri)] = reference
    elif not replaces:
        return
    beside = _uploads_file(path)
    if known:
        atomic_write_text(beside, json.dumps(known, indent=2))
    else:
        beside.unlink(missing_ok=True)


def _uploads_file(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + UPLOADS_SUFFIX)


class CheckpointRecord(BaseModel):
    """The two references of `checkpoints.txt`: the first stage a diffusion model was trained on, and the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_stage: str
    diffusion: str

    def to_text(self) -> str:
        return "".join(f"{key}: {value}\n" for key, value in self.model_dump().items())

    @classmethod
    def read(cls, path: Path) -> CheckpointRecord:
        """Parse a `checkpoints.txt`; a line that is not `first_stage: ...` or `diffusion: ...` is a UserError."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"checkpoint record '{path}' does not exist; `ldm train` writes it into the run folder")
        fields: dict[str, str] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            key, colon, value = line.partition(":")
            if not colon or key.strip() not in cls.model_fields or not value.strip():
                raise UserError(f"'{path}' line {number} is '{line}'; allowed: 'first_stage: REF' and "
                                "'diffusion: REF' lines")
            fields[key.strip()] = value.strip()
        missing = [key for key in cls.model_fields if key not in fields]
        if missing:
            raise UserError(f"'{path}' has no '{missing[0]}:' line; it needs 'first_stage: REF' and 'diffusion: REF'")
        return cls(**fields)


def local_checkpoint(reference: str, workdir: Path, tracking_uri: str | None = None) -> Path:
    """A local path for a checkpoint reference: a path as it is, a URI downloaded once into the cache.

    The tracking URI that resolves `runs:/` (and the server behind `mlflow-artifacts:/`) is `tracking_uri`,
    else $MLFLOW_TRACKING_URI, else the work folder's own store.
    """
    if not is_artifact_uri(reference):
        return Path(reference)
    name = reference.rstrip("/").rsplit("/", 1)[-1]
    if name.endswith(":") or (reference.startswith("runs:/") and reference.count("/") < 2):
        raise UserError(f"checkpoint URI '{reference}' names no file; e.g. runs:/<run id>/checkpoints/diffusion.pt")
    target = artifact_cache_dir(workdir) / hashlib.sha256(reference.encode()).hexdigest() / name
    if not target.is_file():
        from ldm.tracking.runs import TRACKING_URI_ENV, resolve_tracking_uri

        uri = resolve_tracking_uri(workdir, tracking_uri or os.environ.get(TRACKING_URI_ENV))
        if reference.startswith("mlflow-artifacts:/") and not uri.startswith(("http://", "https://")):
            raise UserError(f"checkpoint URI '{reference}' needs the http(s) URI of its `mlflow server` as "
                            f"$MLFLOW_TRACKING_URI, not '{uri}'")
        _download(reference, uri, target)
    return target


def latest_checkpoint(run_id: str, tracking_uri: str, name: str, dest: Path) -> Path | None:
    """Download run `run_id`'s `checkpoints/<name>` to `dest/<name>` (replacing it); None when it has none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        listed = MlflowClient(tracking_uri=tracking_uri).list_artifacts(run_id, CHECKPOINTS_ARTIFACT_PATH)
    except MlflowException as e:
        raise UserError(f"cannot list the checkpoints of run '{run_id}' in {tracking_uri}: {_first_line(e)}") from None
    wanted = f"{CHECKPOINTS_ARTIFACT_PATH}/{name}"
    if not any(entry.path == wanted and not entry.is_dir for entry in listed):
        return None
    target = Path(dest) / name
    _download(f"runs:/{run_id}/{wanted}", tracking_uri, target)
    return target


def _download(reference: str, tracking_uri: str, target: Path) -> None:
    """Fetch one artifact file to `target` through a temporary folder beside it, so `target` is never partial."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".download"))
    try:
        try:
            fetched = Path(download_artifacts(artifact_uri=reference, dst_path=str(scratch),
                                              tracking_uri=tracking_uri))
        except (MlflowException, OSError) as e:
            raise UserError(f"cannot download checkpoint '{reference}' from {tracking_uri}: {_first_line(e)}") from None
        if not fetched.is_file():
            raise UserError(f"checkpoint URI '{reference}' names a folder; name one file in it, e.g. "
                            f"{reference.rstrip('/')}/diffusion.pt")
        os.replace(fetched, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0]
