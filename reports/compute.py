"""FID against the diffusion training compute behind it, and configurations compared at equal compute.

A smaller f makes every UNet step dearer (more latent pixels), so "f = 2 beats f = 4 at step N" can be a
statement about compute rather than about f. Each intermediate FID (`evaluation.fid_every`) is placed at three
measures of the compute spent to reach its step: images seen (step x batch size), UNet training FLOPs
(3 x forward FLOPs per image x images: forward plus a backward of about twice its cost) and device-hours (the
run's `train_hours` spread evenly over its steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.runs import StudyRuns, column_or_missing, metric_column, param_column

BACKWARD_FACTOR = 3.0  # training FLOPs per image = forward + backward (about twice the forward)


@dataclass(frozen=True)
class ComputeAxis:
    column: str
    label: str


COMPUTE_AXES: tuple[ComputeAxis, ...] = (
    ComputeAxis("images", "images seen"),
    ComputeAxis("pflops", "UNet training PFLOPs"),
    ComputeAxis("device_hours", "device-hours"),
)


def compute_curves(study: StudyRuns, fid: str, configurations: pd.Series) -> pd.DataFrame:
    """One row per intermediate FID of each finished run: configuration, run_id, step, the FID and its compute.

    `configurations` labels each finished run. A run without the UNet FLOPs or training time has NaN there.
    """
    finished = study.finished
    numbers = {name: pd.to_numeric(column_or_missing(finished, column), errors="coerce") for name, column in {
        "batch": param_column("training.diffusion.batch_size"), "steps": param_column("training.diffusion.steps"),
        "gflops": metric_column("unet_gflops"), "hours": metric_column("train_hours")}.items()}
    parts = []
    for index, run_id in finished["run_id"].items():
        history = study.history(run_id, fid)
        images = history["step"] * numbers["batch"][index]
        parts.append(pd.DataFrame({
            "configuration": configurations[index], "run_id": run_id, "step": history["step"],
            "fid": history["value"], "images": images,
            "pflops": BACKWARD_FACTOR * numbers["gflops"][index] * images / 1e6,
            "device_hours": numbers["hours"][index] * history["step"] / numbers["steps"][index]}))
    columns = ["configuration", "run_id", "step", "fid", *(a.column for a in COMPUTE_AXES)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def equal_compute(curves: pd.DataFrame, axis: str, order: Sequence[str]) -> tuple[float, pd.DataFrame]:
    """Each configuration's FID at the largest compute every configuration reached on `axis`.

    A run's FID there is interpolated linearly in log compute between its two nearest intermediate FIDs; the
    configuration's value is the mean over its runs (columns configuration, fid, sd, n). NaN budget when a
    configuration has no run with two points on that axis.
    """
    usable = curves.dropna(subset=[axis, "fid"])
    usable = usable[usable[axis] > 0]
    reach = usable.groupby("run_id")[axis].agg(["min", "max", "count"])
    reach = reach[reach["count"] >= 2]
    runs = usable[usable["run_id"].isin(reach.index)]
    present = [c for c in order if c in set(runs["configuration"])]
    if len(present) < len(set(curves["configuration"])):
        return float("nan"), pd.DataFrame(columns=["configuration", "fid", "sd", "n"])
    per_configuration = runs.groupby("configuration", observed=True)["run_id"].unique()
    budget = min(max(reach.loc[r, "max"] for r in per_configuration[c]) for c in present)
    rows = []
    for configuration in present:
        values = []
        for run_id in per_configuration[configuration]:
            curve = runs[runs["run_id"] == run_id].sort_values(axis)
            if reach.loc[run_id, "min"] <= budget <= reach.loc[run_id, "max"]:
                values.append(float(np.interp(np.log(budget), np.log(curve[axis]), curve["fid"])))
        rows.append({"configuration": configuration, "fid": np.mean(values) if values else np.nan,
                     "sd": np.std(values, ddof=1) if len(values) > 1 else np.nan, "n": len(values)})
    return float(budget), pd.DataFrame(rows)
