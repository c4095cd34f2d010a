"""label_efficiency.png: a budget axis only when there are several budgets; with one (the demo),
one point per method with its error bar and the methods on the x axis."""
import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnunet_mmpretrain.benchmark import leaderboard  # noqa: E402


def _rows(budgets):
    rows = []
    for tag, label in budgets:
        for j, (m, std) in enumerate((("scratch", 10.7), ("pretrained", float("nan")))):
            for region in ("mean", "whole tumor"):
                rows.append({"dataset_name": "PhantomBraTS", "evaluation": "cv", "region": region, "method": m,
                             "budget": tag, "labels": label, "mean": 70.0 + j + len(rows), "std": std})
    return rows


def _draw(rows, monkeypatch, tmp_path):
    monkeypatch.setattr(plt, "close", lambda fig=None: None)      # keep the figure to look at it
    leaderboard.plot(rows, str(tmp_path / "label_efficiency.png"))
    assert (tmp_path / "label_efficiency.png").stat().st_size > 5000
    return plt.gcf().axes[0]


def test_one_budget_draws_a_point_per_method_with_error_bars(monkeypatch, tmp_path):
    ax = _draw(_rows([("frac100", "100 %")]), monkeypatch, tmp_path)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["scratch", "pretrained"]
    assert "one label budget: 100 %" in ax.get_xlabel() and "%" not in ax.get_xlabel().split(":")[0]
    bars = ax.containers
    assert len(bars) == 2
    (x0, y0), = bars[0].lines[0].get_xydata()
    assert (x0, y0) == (0, 70.0)
    low, high = bars[0].lines[2][0].get_segments()[0][:, 1]
    assert high - low == pytest.approx(2 * 10.7)                      # the std drawn as the error bar
    assert not math.isnan(bars[1].lines[0].get_xydata()[0][1])        # a NaN std draws the point alone
    assert ax.get_xlim() == pytest.approx((-0.6, 1.6))
    plt.close("all")


def test_several_budgets_keep_the_budget_axis(monkeypatch, tmp_path):
    ax = _draw(_rows([("frac20", "20 %"), ("frac100", "100 %")]), monkeypatch, tmp_path)
    assert ax.get_xlabel().startswith("labelled training data")
    xs = sorted(ax.containers[0].lines[0].get_xdata())
    assert xs == pytest.approx([20 * 0.985, 100 * 0.985])           # budgets, nudged apart per method
    plt.close("all")
