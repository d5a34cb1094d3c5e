"""The benchmark's chart (bench/report.py, matplotlib as drawn): no two tick labels of a panel
overlap, whatever the range of its values (issue 28 item 17: the 1 MiB panel's did)."""

from __future__ import annotations

import json

import pytest
from bench import report
from bench.scenarios import BY_NAME

from testkit.support import ROOT


def overlaps(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(panel, label, label) for each two x tick labels drawn over each other."""
    import matplotlib.pyplot as plt

    fig = report.figure(rows)
    fig.set_dpi(report.DPI)
    renderer = fig.canvas.get_renderer()
    found = []
    try:
        for ax in fig.axes:
            drawn = _drawn(ax, renderer, *ax.get_xlim())
            found += [(ax.get_title(), a, b) for (box_a, a), (box_b, b) in zip(drawn, drawn[1:])
                      if box_a.x1 > box_b.x0]
            assert len(drawn) >= 2, (ax.get_title(), drawn)  # a scale to read
    finally:
        plt.close(fig)
    return found


def _drawn(ax, renderer, low: float, high: float) -> list:
    """The x tick labels matplotlib draws (visible, not empty, inside the axis), left to right."""
    labels = [(label.get_window_extent(renderer), label.get_text())
              for ticks, minor in ((ax.xaxis.get_major_ticks(), False), (ax.xaxis.get_minor_ticks(), True))
              for tick, label in zip(ticks, ax.xaxis.get_ticklabels(minor=minor))
              if label.get_visible() and label.get_text() and low <= tick.get_loc() <= high]
    return sorted(labels, key=lambda item: item[0].x0)


def rows(values_by_body: dict[int, list[float]]) -> list[dict]:
    return [{"name": name, "body_bytes": body, "rps": rps}
            for body, values in values_by_body.items() for name, rps in zip(BY_NAME, values)]


def test_the_committed_results_chart_has_no_overlapping_labels() -> None:
    latest = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())["scenarios"]
    assert overlaps(latest) == []


@pytest.mark.parametrize("low, high", [
    (0.3, 2.0), (150.0, 6000.0), (174.0, 5182.0), (700.0, 900.0), (800.0, 90_000.0), (5.0, 2_000_000.0),
])
def test_no_range_of_values_overlaps_its_labels(low: float, high: float) -> None:
    step = (high / low) ** (1 / (len(BY_NAME) - 1))
    values = [low * step ** i for i in range(len(BY_NAME))]
    assert overlaps(rows({1024: values, 1024 * 1024: values[::-1]})) == []
