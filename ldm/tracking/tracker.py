"""The small logging interface the training loop and evaluation call: no-op or one MLflow run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

if TYPE_CHECKING:
    from ldm.distributed import Ranks


class Tracker(Protocol):
    tracking_uri: str | None  # the store of its run; None without one

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_image(self, image: Image.Image, key: str, step: int | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def artifact_uri(self, artifact_path: str) -> str | None:
        """`runs:/<run id>/<artifact_path>`, a name other machines can download; None without a run."""
        ...


class NullTracker:
    """Tracking switched off: every call does nothing."""

    tracking_uri: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, image: Image.Image, key: str, step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def artifact_uri(self, artifact_path: str) -> str | None:
        return None


def main_rank_tracker(tracker: Tracker, ranks: Ranks) -> Tracker:
    """The tracker itself on rank 0, a NullTracker on the other ranks of a torchrun job: one rank logs."""
    return tracker if ranks.is_main else NullTracker()


class MlflowTracker:
    """Logs into one existing MLflow run by id (no global active-run state, safe in worker processes)."""

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.tracking_uri: str | None = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, image: Image.Image, key: str, step: int | None = None) -> None:
        # MLflow's keyed images (key, step): the UI's image panel steps through them and compares runs.
        self.client.log_image(self.run_id, image, key=key, step=step or 0)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        # One batch is one database transaction; a set_tag per tag costs one each.
        self.client.log_batch(self.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])

    def artifact_uri(self, artifact_path: str) -> str | None:
        return f"runs:/{self.run_id}/{artifact_path}"

    def end(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (`autoencoder.f`), lists kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
