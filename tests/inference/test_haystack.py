"""The haystack's scores of a timeline: found, peak found, detected, latency and false alarms on hand-made rows."""

from __future__ import annotations

import numpy as np

from aum_jax.inference import haystack


def timeline(rows: int = 100, step: float = 0.1):
    starts = np.arange(rows) * step
    return starts, starts + step, np.full((rows, 3), 0.01)


def test_a_causal_detector_that_fires_after_the_word_is_found_with_its_latency():
    starts, ends, scores = timeline()
    placement = {"start": 4.0, "end": 4.5, "class": 2}
    scores[47, 2] = 0.9  # fires 0.2 s after the word ends (its row ends at 4.8 s)
    scores[80, 0] = 0.7  # elsewhere: a false alarm
    s = haystack.score_timeline(starts, ends, scores, placement)
    assert s["found"] and s["peak_found"] and s["detected"]
    assert abs(s["latency_s"] - 0.3) < 1e-9 and s["false_alarms"] == 1
    late = scores.copy()
    late[47, 2], late[60, 2] = 0.01, 0.9  # 1.5 s after the word: too late to count
    s = haystack.score_timeline(starts, ends, late, placement)
    assert not s["found"] and not s["peak_found"] and not s["detected"] and s["latency_s"] is None
    assert s["false_alarms"] == 2


def test_summary_gives_shares_medians_and_rates():
    results = [{"found": True, "peak_found": True, "time_error_s": 0.1, "detected": True, "latency_s": 0.2,
                "false_alarms": 1, "wall_s": 1.0, "duration_s": 30.0},
               {"found": False, "peak_found": True, "time_error_s": 0.3, "detected": False, "latency_s": None,
                "false_alarms": 0, "wall_s": 2.0, "duration_s": 30.0}]
    s = haystack.summary(results)
    assert (s["found"], s["peak_found"], s["detected"]) == (50.0, 100.0, 50.0)
    assert s["latency_s"] == 0.2 and s["false_alarms_per_min"] == 1.0 and s["wall_per_min_s"] == 3.0
