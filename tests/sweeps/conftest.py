"""Makes the helper module `sweep_fakes` importable by that name, as the sweep worker processes import it."""

import sys
from pathlib import Path

HELPERS = str(Path(__file__).resolve().parent)
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)
