"""The inverse-loss curriculum: 0 before warmup, linear ramp to base over [warmup, 2*warmup), capped."""

import pytest

from ups.errors import ConfigError
from ups.training.curriculum import inverse_loss_weight


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.0), (9, 0.0), (10, 0.0), (15, 0.25), (19, 0.45), (20, 0.5), (100, 0.5)],
)
def test_ramp_values(epoch, expected):
    # base 0.5, warmup 10: epochs 0, warmup-1, warmup, 1.5*warmup, 2*warmup-1, 2*warmup, 10*warmup
    assert inverse_loss_weight(epoch, base=0.5, warmup=10, max_weight=1.0) == pytest.approx(expected)


@pytest.mark.parametrize(("epoch", "expected"), [(0, 0.0), (3, 0.0), (4, 0.0), (6, 0.3), (8, 0.3), (40, 0.3)])
def test_cap_applies_everywhere(epoch, expected):
    # base 2.0 would give 1.0 at epoch 6 and 2.0 from epoch 8; the cap 0.3 wins
    assert inverse_loss_weight(epoch, base=2.0, warmup=4, max_weight=0.3) == pytest.approx(expected)


def test_cap_only_bites_above_it():
    # ramp of base 1.0 over [4, 8): 0.25 at 5 (below cap 0.6), 0.75 at 7 (capped)
    assert inverse_loss_weight(5, base=1.0, warmup=4, max_weight=0.6) == pytest.approx(0.25)
    assert inverse_loss_weight(7, base=1.0, warmup=4, max_weight=0.6) == pytest.approx(0.6)


def test_zero_warmup_means_base_from_the_start():
    assert inverse_loss_weight(0, base=0.2, warmup=0, max_weight=1.0) == pytest.approx(0.2)
    assert inverse_loss_weight(0, base=0.2, warmup=0, max_weight=0.1) == pytest.approx(0.1)


def test_negative_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match="must all be >= 0") as err:
        inverse_loss_weight(1, base=0.1, warmup=-1, max_weight=1.0)
    assert "\n" not in str(err.value)
