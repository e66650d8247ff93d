"""MetricInfo: formatting, ranking and the scale of relative thresholds, in both directions."""

from __future__ import annotations

import math

import msgspec
import pytest

from esper_tui.engine.vocabulary import ACCURACY, MetricInfo

MSE = MetricInfo(name="mse", higher_is_better=False, percent=False)


def test_accuracy_is_the_default() -> None:
    assert MetricInfo() == ACCURACY
    assert (ACCURACY.name, ACCURACY.higher_is_better, ACCURACY.percent) == ("accuracy", True, True)


def test_format_percent_and_plain() -> None:
    assert ACCURACY.format(0.714) == "71.4 %"
    assert ACCURACY.format(0.012, signed=True) == "+1.2 points"
    assert ACCURACY.format(-0.012, signed=True, unit=False) == "-1.2"
    assert ACCURACY.format(None) == "-"
    assert MSE.format(0.000123) == "0.000123"
    assert MSE.format(12.34) == "12.3"
    assert MSE.format(-0.0031, signed=True) == "-0.0031"


@pytest.mark.parametrize(("metric", "good", "bad"), [(ACCURACY, 0.9, 0.8), (MSE, 0.1, 0.2)])
def test_better_and_gain_follow_the_direction(metric: MetricInfo, good: float, bad: float) -> None:
    assert metric.better(good, bad)
    assert not metric.better(bad, good)
    assert not metric.better(good, good)
    assert metric.gain(good, bad) == pytest.approx(0.1)
    assert metric.gain(bad, good) == pytest.approx(-0.1)
    assert metric.better(bad, metric.worst)
    assert not math.isfinite(metric.worst)


def test_scale_is_the_range_for_a_percent_and_the_magnitude_otherwise() -> None:
    assert ACCURACY.scale(0.6) == 1.0
    assert MSE.scale(-2.5) == 2.5
    assert MSE.scale(0.0) > 0


def test_it_travels_on_the_wire() -> None:
    data = msgspec.msgpack.encode(MSE)
    assert msgspec.msgpack.decode(data, type=MetricInfo) == MSE
