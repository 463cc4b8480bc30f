"""The thresholds calibration takes from labelled images."""

import numpy as np
from sklearn.metrics import f1_score

from training.metrics import best_f1_threshold


def test_best_f1_threshold_sits_midway_between_flagged_and_passed_scores():
    """The best-F1 threshold keeps every verdict when the scores move in their last bits
    (an image scored again in another batch): it lies midway between the lowest flagged
    and the highest passed score, not one ulp below a score."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20, bool), np.ones(10, bool)]
    scores = np.r_[rng.normal(3, 1, 20), rng.normal(6, 1, 10)].astype(np.float32)
    tau, f1 = best_f1_threshold(labels, scores)
    flagged = scores > tau
    assert f1 == f1_score(labels, flagged)
    assert tau == (float(scores[flagged].min()) + float(scores[~flagged].max())) / 2
    for nudge in (1 - 1e-6, 1 + 1e-6):
        assert np.array_equal((scores * np.float32(nudge)) > tau, flagged)
    every, _ = best_f1_threshold(np.ones(4, bool), np.arange(4, dtype=np.float32))
    assert (np.arange(4) > every).all()  # all flagged: just below the lowest score
