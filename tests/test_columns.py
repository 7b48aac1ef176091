"""One naming of the prediction columns (issue 11.1's live bug): the predictor's table at a
non-integer horizon is scored by the evaluation on the classification head's column, not on a
fallback."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from types import SimpleNamespace

from nnunet_multitask.contract import recurrence_column, survival_column, survival_times
from nnunet_multitask.prediction_engine import MultiTaskPredictor


def _table_at(horizon: float, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    class _TablePredictor(MultiTaskPredictor):  # only the table-building state
        head_config = SimpleNamespace(horizon_months=horizon)

    predictor = _TablePredictor.__new__(_TablePredictor)
    predictor.dataset_json = {"channel_names": {"0": "T2", "1": "ADC", "2": "Dapp", "3": "Kapp"}}
    times = survival_times(horizon)
    predictor.head_results = {}
    for i in range(n):
        s = np.sort(rng.uniform(0.3, 0.99, size=len(times)))[::-1]
        predictor.head_results[f"LARC_{i:04d}"] = {
            "folds": [{"risk_score": float(rng.normal()), "p_recurrence": float(rng.uniform(0.05, 0.95)),
                       "survival": dict(zip(times, s)), "tumour_found": True}],
            "clinical_imputed": False}
    return predictor.predictions_table()


def test_column_names_at_integer_and_non_integer_horizons():
    assert recurrence_column(36) == recurrence_column(36.0) == "p_recurrence_36m"
    assert recurrence_column(18.5) == "p_recurrence_18.5m"
    assert survival_column(18.5) == "surv_prob_18.5m" and survival_column(12) == "surv_prob_12m"
    assert survival_times(36) == (12.0, 24.0, 36.0, 60.0)
    assert survival_times(18.5) == (12.0, 18.5, 24.0, 36.0, 60.0)


def test_non_integer_horizon_from_predictor_table_to_evaluation(tmp_path):
    import evaluation.survival_eval as SE
    horizon = 18.5
    table = _table_at(horizon)
    assert {"p_recurrence_18.5m", "surv_prob_18.5m", "surv_prob_12m"} <= set(table.columns)
    assert "p_recurrence_18m" not in table.columns
    pred = tmp_path / "predictions.csv"
    table.to_csv(pred, index=False)
    rng = np.random.default_rng(5)
    outcomes = pd.DataFrame({"case_id": table.case_id, "dfs_months": rng.uniform(2, 60, len(table)).round(1),
                             "dfs_event": rng.integers(0, 2, len(table))})
    outcomes.loc[:3, "dfs_event"] = 1
    outcomes.loc[:1, "dfs_months"] = 10.0
    out_csv = tmp_path / "outcomes.csv"
    outcomes.to_csv(out_csv, index=False)
    out = tmp_path / "report"
    assert SE.main(["--predictions", str(pred), "--outcomes", str(out_csv), "--horizon", str(horizon),
                    "--bootstrap", "20", "--no-figures", "-o", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())["models"]["predictions"]["all"]
    # the AUC scores the classification head's column, not the risk_score fallback
    assert result["auc_18.5m_score"] == "p_recurrence_18.5m"
    assert result["auc_18.5m_survival_head"] is not None
