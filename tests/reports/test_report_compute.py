"""reports/compute.py: intermediate FIDs placed at their training compute, and the comparison at equal compute."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports.compute import equal_compute


def curve(configuration: str, run_id: str, pflops: list[float], fid: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"configuration": configuration, "run_id": run_id, "step": range(len(fid)), "fid": fid,
                         "pflops": pflops})


def test_each_configuration_is_read_at_the_most_compute_all_of_them_reached():
    curves = pd.concat([
        curve("f=2", "a", [1.0, 4.0, 16.0], [40.0, 30.0, 20.0]),
        curve("f=2", "b", [1.0, 4.0, 16.0], [42.0, 32.0, 22.0]),
        curve("f=4", "c", [0.5, 2.0, 8.0], [35.0, 28.0, 25.0]),  # cheaper steps: it stops at 8 PFLOPs
    ], ignore_index=True)
    budget, at = equal_compute(curves, "pflops", ["f=2", "f=4"])
    assert budget == 8.0
    # Linear in log compute: 8 is halfway between 4 and 16 on a log scale.
    f2 = at.set_index("configuration").loc["f=2"]
    assert f2["fid"] == pytest.approx(np.mean([25.0, 27.0])) and f2["n"] == 2
    assert f2["sd"] == pytest.approx(np.std([25.0, 27.0], ddof=1))
    f4 = at.set_index("configuration").loc["f=4"]
    assert f4["fid"] == 25.0 and f4["n"] == 1 and math.isnan(f4["sd"])


def test_configurations_without_a_common_range_are_not_compared():
    curves = pd.concat([curve("f=1", "a", [10.0, 20.0], [50.0, 40.0]), curve("f=4", "b", [1.0, 2.0], [30.0, 25.0])])
    budget, at = equal_compute(curves, "pflops", ["f=1", "f=4"])
    assert budget == 2.0 and at.set_index("configuration")["n"].to_dict() == {"f=1": 0, "f=4": 1}
    # A configuration with a single point has no curve to read: no budget at all.
    budget, at = equal_compute(pd.concat([curves, curve("f=8", "c", [1.0], [30.0])]), "pflops",
                               ["f=1", "f=4", "f=8"])
    assert math.isnan(budget) and at.empty
