"""One torch thread per test process: `pytest -n 2` runs two processes on two cores."""

import torch

torch.set_num_threads(1)
