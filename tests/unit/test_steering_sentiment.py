"""The sentiment sweep's trend checks (steerlab.steering.sentiment) on sequences worked out by hand."""

from __future__ import annotations

import pytest

from steerlab.steering.sentiment import is_monotone, monotone_run


def test_monotone_run_by_hand():
    # the 56-prompt SmolLM2 scores: flat at the first step (-0.0387 -> -0.0417), then rising six scales
    scores = [-0.0387, -0.0417, 0.0595, 0.2932, 0.383, 0.5065, 0.6328]
    assert monotone_run(scores) == (1, 6) and not is_monotone(scores) and is_monotone(scores[1:])
    # the 12-prompt scores: rising over indices 0..4, a dip at 5
    assert monotone_run([-0.0833, 0.0417, 0.125, 0.3819, 0.4597, 0.3333, 0.5208]) == (0, 4)
    assert monotone_run([1.0, 2.0, 2.0, 3.0]) == (0, 1)  # a tie breaks the stretch; the first of equal length
    assert monotone_run([3.0, 1.0, 0.0, 2.0], increasing=False) == (0, 2)
    assert monotone_run([5.0]) == (0, 0)
    with pytest.raises(ValueError, match="at least one value"):
        monotone_run([])
