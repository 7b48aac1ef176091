"""evaluation/decision_curve.py against a hand computation of net benefit (Kaplan-Meier among positives)."""
import numpy as np
import pytest

from evaluation import decision_curve as D

TIME = np.array([3.0, 8, 12, 20, 30, 40, 45, 50, 60, 70])
EVENT = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0, 0])
P = np.array([0.7, 0.5, 0.2, 0.45, 0.35, 0.1, 0.3, 0.15, 0.05, 0.25])


def _km_risk(time, event, at):
    """1 - Kaplan-Meier survival at ``at``, by hand."""
    survival = 1.0
    for u in np.unique(time[(event == 1) & (time <= at)]):
        survival *= 1 - ((time == u) & (event == 1)).sum() / (time >= u).sum()
    return 1 - survival


def _net_benefit(p, threshold, horizon=36.0):
    positive = p >= threshold
    if not positive.any():
        return 0.0
    if TIME[positive].max() < horizon:  # dcurves: the positives' Kaplan-Meier curve ends before the horizon
        return None
    risk = _km_risk(TIME[positive], EVENT[positive], horizon)
    share = positive.mean()
    return risk * share - (1 - risk) * share * threshold / (1 - threshold)


def test_net_benefit_by_hand():
    thresholds = (0.1, 0.2, 0.3, 0.4, 0.6)
    result, reason = D.decision_curve(TIME, EVENT, {"classification_head": P, "survival_head": P[::-1]}, 36.0,
                                      thresholds)
    assert reason is None and result["thresholds"] == list(thresholds)
    for i, t in enumerate(thresholds):
        for head, p in (("classification_head", P), ("survival_head", P[::-1])):
            expected = _net_benefit(p, t)
            assert result["net_benefit"][head][i] == (None if expected is None else pytest.approx(expected))
        prevalence = _km_risk(TIME, EVENT, 36.0)
        assert result["net_benefit"]["treat_all"][i] == pytest.approx(prevalence - (1 - prevalence) * t / (1 - t))
        assert result["net_benefit"]["treat_none"][i] == 0
    assert result["km_risk_by_horizon"] == pytest.approx(_km_risk(TIME, EVENT, 36.0))
    assert result["net_benefit"]["classification_head"][3] is None  # cases >= 0.4 all followed < 36 months
    assert result["above_treat_all_and_none"]["classification_head"] == [[0.1, 0.3]]
    assert result["above_treat_all_and_none"]["survival_head"] == []
    # A mutated rule (complete-case event share instead of KM among positives) differs here.
    positive = P >= 0.2  # case c, censored at 12 months, is among them
    naive = (EVENT[positive] & (TIME[positive] <= 36)).mean()
    naive_benefit = naive * positive.mean() - (1 - naive) * positive.mean() * 0.2 / 0.8
    assert abs(naive_benefit - result["net_benefit"]["classification_head"][1]) > 0.01


def test_ranges_and_reasons():
    assert D.thresholds_from(0.01, 0.6, 0.01) == D.THRESHOLDS and len(D.THRESHOLDS) == 60
    assert D._runs([0.1, 0.2, 0.3, 0.4], np.array([True, True, False, True])) == [[0.1, 0.2], [0.4, 0.4]]
    assert D.decision_curve(TIME / 10, EVENT, {"h": P}, 36.0)[1].startswith("horizon 36 months beyond")
    assert D.decision_curve(TIME, 0 * EVENT, {"h": P}, 36.0)[1].startswith("no recurrence")
    with pytest.raises(ValueError):
        D.thresholds_from(0.5, 0.2, 0.01)
