"""MLflow tracking: the logging interface the loop calls, the tag catalog, and (in `runs`) run setup.

`ldm.tracking.runs` imports torch, so it is not imported here: `ldm --help` imports this package.
"""

from ldm.tracking.tags import Role, Tag, TrialOutcome
from ldm.tracking.tracker import MlflowTracker, NullTracker, Tracker, flatten, main_rank_tracker

__all__ = ["MlflowTracker", "NullTracker", "Role", "Tag", "Tracker", "TrialOutcome", "flatten", "main_rank_tracker"]
