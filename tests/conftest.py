"""Test-wide settings.

One torch thread: the tests use tiny tensors, and on a shared 2-core machine a second thread
makes every op wait at an OpenMP barrier (a 16 s kernel test file took 3.5 minutes); the
exact-equality tests (resume, DDP) also want the same thread count in every run. The cores
are used by running one test process per core instead (`pytest -n auto`, pytest-xdist).
"""

import torch

torch.set_num_threads(1)
