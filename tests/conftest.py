"""Test session setup: tiny models run fastest on one thread (and leave the other core to the OS/CI)."""

import torch

torch.set_num_threads(1)
