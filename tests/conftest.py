"""Test-wide settings: one torch thread, so a busy 2-core machine cannot stall tiny ops."""

import torch

torch.set_num_threads(1)
