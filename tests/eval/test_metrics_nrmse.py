"""nRMSE against values computed by hand."""

import math

import torch

from ups.eval.metrics import nrmse, nrmse_per_step


def test_nrmse_of_scaled_field_is_the_scale_error():
    # p = (1 + a) y  =>  sqrt(mean (a y)^2) / sqrt(mean y^2) = |a| exactly, whatever y is.
    y = torch.randn(3, 5, 64, 2, generator=torch.Generator().manual_seed(0))
    assert math.isclose(nrmse(1.1 * y, y), 0.1, rel_tol=1e-5)


def test_nrmse_hand_computed_and_per_step():
    y = torch.tensor([[[[1.0], [1.0]], [[2.0], [0.0]]]])  # [B=1, T=2, X=2, C=1]
    p = torch.tensor([[[[1.0], [0.0]], [[2.0], [0.0]]]])
    # step 0: sqrt((0 + 1)/2) / sqrt((1 + 1)/2) = sqrt(0.5); step 1: 0
    per_step = nrmse_per_step(p, y)
    assert len(per_step) == 2
    assert math.isclose(per_step[0], math.sqrt(0.5), rel_tol=1e-6) and math.isclose(per_step[1], 0.0, abs_tol=1e-12)
    assert math.isclose(nrmse(p, y), math.sqrt(0.5) / 2)
