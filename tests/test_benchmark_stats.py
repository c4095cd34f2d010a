"""The benchmark's statistics against scipy: Wilcoxon signed-rank, percentile bootstrap, pairing of
runs and cases."""
import numpy as np
import pytest
import scipy.stats

from nnunet_mmpretrain.benchmark import stats


def test_wilcoxon_matches_scipy_and_exact_values():
    d = [1.5, -0.3, 2.2, 0.8, -1.1, 3.0, 0.4, 1.9]
    assert stats.wilcoxon_p(d) == pytest.approx(scipy.stats.wilcoxon(d).pvalue)
    assert stats.wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)      # exact: all 5 ranks positive
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0                       # no difference at all
    assert np.isnan(stats.wilcoxon_p([]))


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    d = rng.normal(2.0, 3.0, size=40)
    lo, hi = stats.bootstrap_ci(d, n_boot=20000, seed=1)
    ref = scipy.stats.bootstrap((d,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                                random_state=np.random.default_rng(2)).confidence_interval
    width = ref.high - ref.low
    assert lo == pytest.approx(ref.low, abs=0.05 * width) and hi == pytest.approx(ref.high, abs=0.05 * width)
    assert lo < d.mean() < hi
    assert stats.bootstrap_ci([1.0, 2.0], seed=5) == stats.bootstrap_ci([1.0, 2.0], seed=5)   # reproducible
    assert all(np.isnan(stats.bootstrap_ci([1.0])))


def test_paired_averages_each_case_over_paired_runs():
    base = {(0, 0): {"a": 50, "b": 60, "c": 70, "d": 80, "e": 90}, (0, 1): {"a": 52, "b": 58, "c": 71, "d": 79, "e": 91}}
    meth = {(0, 0): {"a": 55, "b": 61, "c": 69, "d": 85, "e": 99}, (0, 1): {"a": 53, "b": 66, "c": 72, "d": 83, "e": 95},
            (0, 2): {"a": 0, "b": 0, "c": 0, "d": 0, "e": 0}}               # unpaired run: ignored
    r = stats.paired(meth, base)
    per_case = np.array([(5 + 1) / 2, (1 + 8) / 2, (-1 + 1) / 2, (5 + 4) / 2, (9 + 4) / 2])
    assert r.n_cases == 5 and r.n_runs == 2
    assert r.delta == pytest.approx(per_case.mean())
    assert r.p == pytest.approx(scipy.stats.wilcoxon(per_case).pvalue)
    assert r.ci_low <= r.delta <= r.ci_high
    assert (r.wins, r.losses) == (4, 0)
    m, s = stats.mean_std([1.0, 2.0, 4.0])
    assert (m, s) == (pytest.approx(7 / 3), pytest.approx(np.std([1, 2, 4], ddof=1)))


# ------------------------------------------------------------------------------------ splits
