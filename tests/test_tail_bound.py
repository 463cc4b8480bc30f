"""tau's rule (training.calibrate.tail_bound): a new normal image exceeds it at the rate asked,
however few held-out normals it was fitted on, where their highest score does not."""

import numpy as np
import pytest

from training.calibrate import tail_bound


@pytest.mark.parametrize("n", [3, 9])
def test_a_new_normal_exceeds_the_bound_at_the_rate_asked(n):
    rng = np.random.default_rng(n)
    trials = 20_000
    held, new = rng.normal(5.0, 2.0, (trials, n)), rng.normal(5.0, 2.0, trials)
    over_bound = np.mean([x > tail_bound(h, 0.05) for h, x in zip(held, new, strict=True)])
    over_highest = np.mean(new > held.max(axis=1))
    assert over_bound == pytest.approx(0.05, abs=0.01)
    assert over_highest == pytest.approx(1 / (n + 1), abs=0.015)  # the former rule


def test_one_score_is_its_own_bound():
    assert tail_bound(np.array([4.5]), 0.05) == 4.5
