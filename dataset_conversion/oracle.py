"""The synthetic cohort's oracle as a predictions file: the true linear predictor, evaluated like a model.

The oracle's risk is the true linear predictor of the generator's proportional-hazards model;
its recurrence probability and survival curve follow from the known Weibull baseline. It is
the ceiling any model can reach on that cohort (evaluation only: ``ground_truth.csv`` never
enters training, model selection or prediction).

Partial oracles say what a model's *inputs* can reach (``terms``):

* ``"image"``: every image-borne term that carries risk in the cohort, the ceiling of an
  image-only model (``MultiRecTrainer_MRI``): the sum of ``ground_truth.csv``'s ``term_<name>``
  columns where the cohort has them (drawn with ``--findings`` or ``--image-risk``: volume, ADC and
  each finding, 0 where a term carries no risk), else log tumour volume and tumour mean ADC;
* ``"volume"``: the tumour-volume term alone (from ``tumour_volume_ml``, whether or not volume
  carries risk in the cohort), the ceiling of a model that sees the tumour's size but no
  quantitative diffusion (``MultiRecTrainer_T2`` on today's cohorts);
* ``"quantities"``: the risk carried by the hand-made tumour quantities, volume + ADC terms
  (``term_volume + term_adc`` where present, else as ``"image"`` on today's cohorts);
* ``"findings"``: the risk carried by the drawn image findings alone (the ``term_<finding>``
  columns; a cohort drawn without findings has none and is refused).

On today's cohorts (no ``term_`` columns) ``"image"`` and ``"volume"`` give what they always gave.

Their risk score is that part of the linear predictor (ranking is what C-index and AUC read);
their probabilities use the full oracle's baseline with the part shifted to the full predictor's
mean, an approximation stated here because it does not marginalise the other terms.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dataset_conversion.synthetic_larc import (ADC_POPULATION_MEAN, ADC_POPULATION_SD, BASELINE_LP_OFFSET,
                                               COEFFICIENTS, FINDINGS, IMAGE_RISK_TERMS, VOLUME_LOG_SD,
                                               VOLUME_MEDIAN_ML, WEIBULL_SCALE_MONTHS, WEIBULL_SHAPE)

from nnunet_multitask.contract import recurrence_column, survival_column, survival_times  # noqa: E402
ORACLE_TERMS = ("all", "image", "volume", "quantities", "findings")


def image_terms(volume_ml, mean_adc, terms: str = "image") -> np.ndarray:
    """The generator's image-borne part of the linear predictor (``"image"``: volume + ADC terms;
    ``"volume"``: the volume term). Volumes in mL as ``ground_truth.csv`` gives them; a constant
    factor on the volume (the small-field-of-view anatomy scale) shifts every patient alike."""
    vol = COEFFICIENTS["log_volume_std"] * (np.log(np.asarray(volume_ml, dtype=float)) - np.log(VOLUME_MEDIAN_ML)) \
        / VOLUME_LOG_SD
    if terms == "volume":
        return vol
    if terms != "image":
        raise ValueError(f"terms must be 'image' or 'volume', got {terms!r}")
    return vol + COEFFICIENTS["adc_std"] * (np.asarray(mean_adc, dtype=float) - ADC_POPULATION_MEAN) / ADC_POPULATION_SD


def partial_risk(truth: pd.DataFrame, terms: str) -> np.ndarray:
    """The part of the linear predictor that ``terms`` names (module docstring), one value per row of
    ``truth`` (``ground_truth.csv`` rows)."""
    if terms not in ORACLE_TERMS[1:]:
        raise ValueError(f"terms must be one of {ORACLE_TERMS[1:]}, got {terms!r}")
    volume, adc = truth["tumour_volume_ml"], truth["tumour_mean_adc"]
    has_terms = all(f"term_{name}" in truth for name in ("volume", "adc"))
    if terms == "volume":
        return image_terms(volume, adc, "volume")
    permuted = "findings_hazard_from" in truth
    if terms == "findings":
        if permuted:
            raise ValueError("terms='findings': this cohort was drawn with --permute-findings, so the finding terms "
                             "of its hazard come from other patients' findings, which the images do not show: "
                             "they are no ceiling of an image model")
        columns = [f"term_{name}" for name in FINDINGS if f"term_{name}" in truth]
        if not columns:
            raise ValueError("terms='findings': ground_truth.csv has no finding terms (term_<finding> columns); "
                             "the cohort was drawn without --findings")
        return truth[columns].to_numpy(dtype=float).sum(axis=1)
    if not has_terms:
        return image_terms(volume, adc, "image")
    # a permuted cohort's images show none of its hazard's finding terms: its image ceiling is volume + ADC
    names = ("volume", "adc") if terms == "quantities" or permuted else IMAGE_RISK_TERMS
    columns = [f"term_{name}" for name in names if f"term_{name}" in truth]
    return truth[columns].to_numpy(dtype=float).sum(axis=1)


def oracle_survival(linear_predictor, t) -> np.ndarray:
    """The generator's survival function ``S(t | lp) = exp(-(t/lam)^k * exp(lp - offset))``.

    The same Weibull baseline and the same centring offset (``BASELINE_LP_OFFSET``) as
    ``synthetic_larc.sample_outcome`` draws event times with, so the oracle's probabilities are the
    truth, not only its ranking.
    """
    lp = np.asarray(linear_predictor, dtype=float)
    return np.exp(-((float(t) / WEIBULL_SCALE_MONTHS) ** WEIBULL_SHAPE) * np.exp(lp - BASELINE_LP_OFFSET))


def oracle_predictions(cohort_dir, raw_dataset_dir, horizon: float = 36.0, terms: str = "all") -> pd.DataFrame:
    """Predictions CSV rows (``case_id``, ``risk_score``, ``p_recurrence_<H>m``, ``surv_prob_<t>m``)
    for every converted case, from ``ground_truth.csv`` and the converter's ``patient_mapping.csv``;
    ``terms`` picks the full oracle or a partial one (module docstring)."""
    if terms not in ORACLE_TERMS:
        raise ValueError(f"terms must be one of {ORACLE_TERMS}, got {terms!r}")
    truth = pd.read_csv(Path(cohort_dir) / "ground_truth.csv", dtype={"patient_id": str})
    mapping = pd.read_csv(Path(raw_dataset_dir) / "patient_mapping.csv", dtype=str)
    merged = mapping.merge(truth, on="patient_id", how="left", validate="one_to_one")
    if merged["linear_predictor"].isna().any():
        missing = list(merged.loc[merged.linear_predictor.isna(), "patient_id"])
        raise ValueError(f"ground_truth.csv has no linear predictor for patient(s) {missing}")
    lp = merged["linear_predictor"].to_numpy(dtype=float)
    if terms != "all":
        part = partial_risk(merged, terms)
        lp = part - part.mean() + lp.mean()

    def survival(t):
        return oracle_survival(lp, t)

    out = pd.DataFrame({"case_id": merged["case_id"], "risk_score": lp,
                        recurrence_column(horizon): 1.0 - survival(horizon)})
    for t in survival_times(horizon):
        out[survival_column(t)] = survival(float(t))
    return out.sort_values("case_id").reset_index(drop=True)


def held_out_test_cases(raw_dataset_dir) -> set:
    """Case ids of the internal and external test sets (from the dataset's multitask block)."""
    import json
    from nnunet_multitask.contract import DatasetContract
    return set(DatasetContract.from_dataset_json(json.loads((Path(raw_dataset_dir) / "dataset.json").read_text()))
               .held_out_cases)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", required=True)
    p.add_argument("--raw-dataset", required=True, help="the converted dataset folder ($nnUNet_raw/DatasetXXX_Name)")
    p.add_argument("--horizon", type=float, default=36.0)
    p.add_argument("--test-only", action="store_true", help="only the internal and external test cases")
    p.add_argument("--terms", choices=ORACLE_TERMS, default="all",
                   help="all: the full oracle; image: every image term that carries risk in the cohort "
                        "(volume + ADC on cohorts without findings); volume: the volume term; quantities: the "
                        "volume + ADC terms; findings: the drawn image findings' terms")
    p.add_argument("-o", required=True, help="output CSV")
    a = p.parse_args(argv)
    out = oracle_predictions(a.cohort, a.raw_dataset, a.horizon, a.terms)
    if a.test_only:
        out = out[out.case_id.isin(held_out_test_cases(a.raw_dataset))]
    out.to_csv(a.o, index=False)


if __name__ == "__main__":
    main()
