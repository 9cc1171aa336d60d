import json
from pathlib import Path

import numpy as np
import pytest

from reports.replicates import BOOTSTRAP_ARTIFACT, NoReplicates, compare_runs, run_replicates
from reports.statistics import paired_comparison


class Runs:
    """Runs' artifacts as MLflow lays them out: `evaluation/bootstrap.json` per run id."""

    def __init__(self, replicates: dict[str, dict[str, list[float]]]) -> None:
        self.replicates = replicates

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        if run_id not in self.replicates or path != BOOTSTRAP_ARTIFACT:
            return None
        out = dst / path
        out.parent.mkdir(parents=True)
        out.write_text(json.dumps(self.replicates[run_id]))
        return out


RNG = np.random.default_rng(0)
RUNS = Runs({run: {"fid_domain": (mean + 0.1 * RNG.normal(size=20)).tolist()}
             for run, mean in (("a1", 5.0), ("a2", 5.2), ("b1", 4.0), ("b2", 4.1))})


def test_replicates_come_in_run_order() -> None:
    rows = run_replicates(RUNS, ["b2", "a1"], "fid_domain")
    assert rows.shape == (2, 20) and rows[0].tolist() == RUNS.replicates["b2"]["fid_domain"]


def test_compare_runs_is_the_paired_comparison_of_their_replicates() -> None:
    got = compare_runs(RUNS, "fid_domain", ("f4", {"a1": 5.0, "a2": 5.2}), ("f1", {"b1": 4.0, "b2": 4.1}))
    expected = paired_comparison(run_replicates(RUNS, ["a1", "a2"], "fid_domain"),
                                 run_replicates(RUNS, ["b1", "b2"], "fid_domain"), [5.0, 5.2], [4.0, 4.1],
                                 metric="fid_domain", arm="f4", baseline="f1")
    assert got == expected and got.difference == pytest.approx(1.05) and (got.arm, got.n_base) == ("f4", 2)


def test_a_run_without_replicates_is_named() -> None:
    with pytest.raises(NoReplicates, match="run zz has no bootstrap replicates of fid_domain"):
        run_replicates(RUNS, ["a1", "zz"], "fid_domain")
    with pytest.raises(NoReplicates, match="run a1 has no bootstrap replicates of kid_domain"):
        run_replicates(RUNS, ["a1"], "kid_domain")


def test_runs_with_different_replicate_counts_are_refused() -> None:
    runs = Runs({"a": {"fid_domain": [1.0, 2.0]}, "b": {"fid_domain": [1.0, 2.0, 3.0]}})
    with pytest.raises(NoReplicates, match="different replicate counts"):
        run_replicates(runs, ["a", "b"], "fid_domain")
