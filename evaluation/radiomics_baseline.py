"""Radiomics baselines: a penalised Cox model on hand-made tumour features, as a predictions CSV.

The hand-made references a learned image pathway must beat (issue 19): the network's tumour
quantities (``--features quantities``: log volume and the channel means inside the mask) or
IBSI-style first-order, GLCM texture, shape and peritumoural features (``--features texture``),
both from :mod:`evaluation.radiomics`, optionally with the clinical table (``--clinical``: the
"CoxPH on clinical + volume + ADC" comparator with ``--feature-columns log1p_volume_mm3 mean_ADC``).

Usage::

    python -m evaluation.radiomics_baseline --raw-dataset $nnUNet_raw/Dataset501_LARC \
        --test-masks PRED_DIR --features texture [--train-masks DIR] [--clinical] -o predictions.csv
    python evaluation/survival_eval.py --predictions predictions.csv --dataset 501 -o report/

What is fitted, on what
-----------------------
* The model is fitted on the development cases only: those of the dataset's outcomes table
  (``outcomes.csv``, named by the ``"multitask"`` block through
  :class:`nnunet_multitask.contract.DatasetContract`), with their masks from ``--train-masks``
  (default the reference ``labelsTr``). The test outcomes (``outcomes_test.csv``) are never read.
* Model: median imputation, standardisation and scikit-survival's ``CoxnetSurvivalAnalysis``
  (elastic net, ``--l1-ratio``) in one pipeline; the penalty is chosen among the path's alphas
  by Harrell's C over an internal stratified K-fold of the development cases, so the medians and
  the scaling of each inner fit come from its own training part; the final pipeline is refitted
  on every development case. With ``--clinical`` the clinical pretreatment and postoperative
  columns are added, preprocessed by :class:`clinical.preprocessing.ClinicalPreprocessor` fitted on
  the development cases (once, before the inner folds).
* The test cases are every ``<case>.nii.gz`` in ``--test-masks`` (e.g. the output of
  ``nnUNetv2_predict``); a development case found there is predicted too, in-sample, with a note.

Output
------
``case_id, risk_score`` (the Cox linear predictor), ``p_recurrence_<H>m`` (1 - S(H)) and
``surv_prob_<t>m`` for the times of :func:`nnunet_multitask.contract.survival_times` (the Breslow
survival of the fitted Cox; a time beyond the development cases' last follow-up has no estimate
and no column), then ``mask_empty`` (1 when the case's mask was empty) and ``n_imputed_features``
(how many of its features were missing and took the development median). The evaluation reads
the first columns and ignores the last two. Cases with an empty mask are listed on stderr.
``--fit-json`` writes the chosen penalty, the internal C per penalty and the coefficients.

Bad input exits with status 2 and an ``error:`` line naming the case and the file.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from clinical.errors import MultitaskError
from clinical.tables import ClinicalTableError, read_case_table, read_follow_up_table
from evaluation.radiomics import FEATURE_SETS, RadiomicsInputError, extract_dataset_features
from nnunet_multitask.contract import ContractError, DatasetContract, recurrence_column, survival_column, survival_times

__all__ = ["CoxBaseline", "BaselineError", "load_contract", "development_outcomes", "clinical_features",
           "fit_penalised_cox", "predict_baseline", "run_baseline", "build_parser", "main"]

EXIT_BAD_INPUT = 2
CLINICAL_GROUPS = ("pretreatment", "postoperative")
CLINICAL_PREFIX = "clinical_"


class BaselineError(MultitaskError, ValueError):
    """Bad input of the baseline; the message names the case and the file."""


# --------------------------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------------------------
def _check_raw_dataset(raw_dataset: Path) -> Path:
    """The ``dataset.json`` of a raw dataset folder."""
    path = raw_dataset / "dataset.json"
    if not path.is_file():
        raise BaselineError(f"--raw-dataset {raw_dataset}: no dataset.json (expected $nnUNet_raw/DatasetXXX_Name)")
    return path


def _check_development(outcomes: pd.DataFrame, contract: DatasetContract, path: Path) -> None:
    """At least two events and two censored cases, and no held-out case among them."""
    leaked = sorted(set(outcomes.index) & contract.held_out_cases)
    if leaked:
        raise BaselineError(f"{path}: case(s) {leaked[:10]} are internal or external test cases of dataset.json; "
                            "the development outcomes must not hold them")
    events = int(outcomes[contract.event_column].sum())
    if events < 2 or len(outcomes) - events < 2:
        raise BaselineError(f"{path}: {events} event(s) and {len(outcomes) - events} censored case(s); a Cox fit "
                            "with an internal cross-validation needs at least 2 of each")


def _check_features(frame: pd.DataFrame, columns: Optional[Sequence[str]], what: str) -> pd.DataFrame:
    """``frame`` restricted to ``columns`` (all when None); an unknown column is an error."""
    if not columns:
        return frame
    unknown = [c for c in columns if c not in frame.columns]
    if unknown:
        raise BaselineError(f"--feature-columns {unknown} are not {what} features (known: {list(frame.columns)})")
    return frame[list(columns)]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def load_contract(raw_dataset) -> DatasetContract:
    """The ``"multitask"`` block of ``raw_dataset/dataset.json``."""
    path = _check_raw_dataset(Path(raw_dataset))
    try:
        return DatasetContract.from_dataset_json(json.loads(path.read_text()), source=str(path))
    except (ContractError, json.JSONDecodeError) as error:
        raise BaselineError(f"{path}: {error}") from None


def development_outcomes(raw_dataset, contract: DatasetContract) -> pd.DataFrame:
    """The development cases' follow-up (``outcomes.csv``; never the test outcomes), indexed by case."""
    path = Path(raw_dataset) / contract.outcomes_table
    try:
        outcomes = read_follow_up_table(path, contract.time_column, contract.event_column,
                                        id_column=contract.case_id_column, keep_columns=())
    except ClinicalTableError as error:
        raise BaselineError(str(error)) from None
    _check_development(outcomes, contract, path)
    return outcomes


def clinical_features(raw_dataset, contract: DatasetContract, development: Sequence[str],
                      cases: Sequence[str]) -> pd.DataFrame:
    """Pretreatment + postoperative clinical features of ``cases``, preprocessed as the trainer does.

    The :class:`clinical.preprocessing.ClinicalPreprocessor` (median / mode imputation,
    standardisation, one-hot over the declared categories) is fitted on the ``development`` cases
    and applied to ``cases``. Columns are ``clinical_<feature>``.
    """
    from clinical.preprocessing import ClinicalPreprocessor

    path = Path(raw_dataset) / contract.clinical_table
    try:
        table = read_case_table(path, contract.schema())
    except ClinicalTableError as error:
        raise BaselineError(str(error)) from None
    lacking = [c for c in list(development) + list(cases) if c not in table.index]
    if lacking:
        raise BaselineError(f"{path}: no row for case(s) {sorted(set(lacking))[:10]}")
    preprocessor = ClinicalPreprocessor(contract.schema(), groups=CLINICAL_GROUPS)
    preprocessor.fit(table.loc[list(development)])
    values = preprocessor.transform(table.loc[list(cases)])
    return pd.DataFrame(values, index=pd.Index(list(cases), name="case_id"),
                        columns=[CLINICAL_PREFIX + n for n in preprocessor.feature_names])


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
@dataclass
class CoxBaseline:
    """A fitted penalised Cox pipeline and what chose it.

    Attributes
    ----------
    pipeline : sklearn.pipeline.Pipeline
        ``SimpleImputer(median) -> StandardScaler -> CoxnetSurvivalAnalysis`` fitted on every
        development case at the chosen penalty (with its Breslow baseline).
    features : list of str
        Columns the pipeline reads, in order.
    alpha : float
        The chosen penalty.
    internal_c : dict
        Mean internal-fold Harrell's C per alpha (NaN where no fold could be scored).
    dropped : list of str
        Feature columns left out because every development case lacks them.
    """

    pipeline: object
    features: List[str]
    alpha: float
    l1_ratio: float
    n_splits: int
    internal_c: Dict[float, float] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)

    def coefficients(self) -> Dict[str, float]:
        """Coefficients on the standardised features, by feature name."""
        coef = np.asarray(self.pipeline[-1].coef_).ravel()
        return dict(zip(self.features, coef.tolist()))

    def to_dict(self) -> dict:
        return {"model": "CoxnetSurvivalAnalysis (median imputation, standardisation)", "alpha": self.alpha,
                "l1_ratio": self.l1_ratio, "internal_folds": self.n_splits,
                "internal_harrell_c": {f"{a:.6g}": c for a, c in self.internal_c.items()},
                "coefficients": self.coefficients(), "dropped_all_missing": self.dropped}


def _pipeline(l1_ratio: float, alphas=None, n_alphas: int = 30):
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    cox = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas, n_alphas=n_alphas, alpha_min_ratio=0.01,
                                 fit_baseline_model=alphas is not None, max_iter=100000)
    return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()), ("cox", cox)])


def fit_penalised_cox(features: pd.DataFrame, survival: np.ndarray, l1_ratio: float = 0.5, n_splits: int = 5,
                      n_alphas: int = 30, seed: int = 0) -> CoxBaseline:
    """Elastic-net Cox with the penalty chosen by internal cross-validation.

    Parameters
    ----------
    features : DataFrame, shape (n_cases, n_features)
        Development cases only; NaN = missing (imputed by the medians of each fit's own cases).
    survival : structured array, shape (n_cases,)
        ``sksurv.util.Surv.from_arrays(event, time)`` of the same cases, same order.
    l1_ratio : float in (0, 1]
        Elastic-net mixing (1 = lasso).
    n_splits : int
        Internal folds (stratified by event; reduced to the number of events or of censored cases
        when either is smaller, at least 2).
    n_alphas : int
        Length of the penalty path searched (from the largest alpha that zeroes every coefficient
        down to 1 % of it).
    seed : int
        Seed of the internal folds.

    Returns
    -------
    CoxBaseline
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    if not 0.0 < float(l1_ratio) <= 1.0:
        raise BaselineError(f"--l1-ratio must be in (0, 1], got {l1_ratio}")
    dropped = [c for c in features.columns if features[c].isna().all()]
    if dropped:
        _note(f"{len(dropped)} feature(s) have no value for any development case and are left out: {dropped[:10]}")
    x = features.drop(columns=dropped)
    if x.shape[1] == 0:
        raise BaselineError("no feature has a value for any development case")
    event = survival[survival.dtype.names[0]].astype(bool)
    n_splits = max(2, min(int(n_splits), int(event.sum()), int((~event).sum())))
    folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, event))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes of far-off penalties; their C decides
        alphas = _pipeline(l1_ratio, n_alphas=n_alphas).fit(x, survival)[-1].alphas_
        search = GridSearchCV(_pipeline(l1_ratio, alphas=[alphas[0]]), {"cox__alphas": [[a] for a in alphas]},
                              cv=folds, error_score=np.nan, refit=False).fit(x, survival)
    scores = np.asarray(search.cv_results_["mean_test_score"], dtype=float)
    if not np.isfinite(scores).any():
        raise BaselineError("no internal fold could be scored (each needs an event before another case's time)")
    best = float(alphas[int(np.nanargmax(scores))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = _pipeline(l1_ratio, alphas=[best]).fit(x, survival)
    return CoxBaseline(pipeline, list(x.columns), best, float(l1_ratio), n_splits,
                       dict(zip(map(float, alphas), scores.tolist())), dropped)


def predict_baseline(model: CoxBaseline, features: pd.DataFrame, horizon: float) -> pd.DataFrame:
    """``risk_score``, ``p_recurrence_<H>m`` and ``surv_prob_<t>m`` of each row of ``features``.

    Survival columns are the Breslow estimate of the fitted Cox; times beyond the development
    cases' last follow-up (where it is undefined) get no column.
    """
    x = features[model.features]
    transformed = model.pipeline[:-1].transform(x)
    cox = model.pipeline[-1]
    out = pd.DataFrame({"risk_score": cox.predict(transformed)}, index=features.index)
    functions = cox.predict_survival_function(transformed)
    first, last = (float(functions[0].x[0]), float(functions[0].x[-1])) if len(functions) else (0.0, 0.0)

    def survival(t: float) -> list:  # S = 1 before the first development time (sksurv's step holds its first value)
        return [float(f(t)) if t >= first else 1.0 for f in functions]

    if horizon <= last:
        out[recurrence_column(horizon)] = 1.0 - np.asarray(survival(horizon))
    else:
        _note(f"no {recurrence_column(horizon)} column: the horizon ({horizon:g}) lies beyond the development "
              f"cases' last follow-up ({last:g}), where the Cox baseline is undefined")
    for t in survival_times(horizon):
        if t <= last:
            out[survival_column(t)] = survival(t)
    return out


# --------------------------------------------------------------------------------------------
# The whole baseline
# --------------------------------------------------------------------------------------------
def _image_features(raw_dataset: Path, masks: Path, features: str, cases, columns) -> pd.DataFrame:
    try:
        frame = extract_dataset_features(raw_dataset, masks, features, cases=cases)
    except RadiomicsInputError as error:
        raise BaselineError(str(error)) from None
    selected = _check_features(frame, columns, features)
    selected.attrs = dict(frame.attrs)
    return selected


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def run_baseline(raw_dataset, test_masks, features: str = "texture", train_masks=None, clinical: bool = False,
                 feature_columns: Optional[Sequence[str]] = None, horizon: Optional[float] = None,
                 l1_ratio: float = 0.5, n_splits: int = 5, seed: int = 0) -> tuple[pd.DataFrame, CoxBaseline]:
    """Fit the baseline on the development cases and predict the cases of ``test_masks``.

    Parameters mirror the command line (module docstring). Returns the predictions frame (the
    CSV's columns, ``case_id`` first) and the fitted :class:`CoxBaseline`.
    """
    raw_dataset = Path(raw_dataset)
    contract = load_contract(raw_dataset)
    horizon = contract.horizon_months if horizon is None else float(horizon)
    outcomes = development_outcomes(raw_dataset, contract)
    development = list(outcomes.index)
    train_masks = raw_dataset / "labelsTr" if train_masks is None else Path(train_masks)
    x_train = _image_features(raw_dataset, train_masks, features, development, feature_columns)
    x_test = _image_features(raw_dataset, Path(test_masks), features, None, feature_columns)
    for label, frame in (("development", x_train), ("test", x_test)):
        if frame.attrs["empty_masks"]:
            _note(f"{len(frame.attrs['empty_masks'])} {label} case(s) have an empty mask, their features are "
                  f"imputed with the development medians: {frame.attrs['empty_masks']}")
    empty_test = list(x_test.attrs["empty_masks"])
    in_sample = sorted(set(x_test.index) & set(development))
    if in_sample:
        _note(f"{len(in_sample)} case(s) of --test-masks are development cases, predicted in-sample: {in_sample[:10]}")
    if clinical:
        every_case = list(dict.fromkeys(development + list(x_test.index)))
        table = clinical_features(raw_dataset, contract, development, every_case)
        x_train, x_test = x_train.join(table), x_test.join(table)
    from sksurv.util import Surv

    survival = Surv.from_arrays(outcomes[contract.event_column].to_numpy().astype(bool),
                                outcomes[contract.time_column].to_numpy(dtype=float))
    model = fit_penalised_cox(x_train.loc[development], survival, l1_ratio, n_splits, seed=seed)
    predictions = predict_baseline(model, x_test, horizon)
    predictions["mask_empty"] = x_test.index.isin(empty_test).astype(int)
    predictions["n_imputed_features"] = x_test[model.features].isna().sum(axis=1).astype(int)
    return predictions.rename_axis("case_id").reset_index(), model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dataset", required=True, help="$nnUNet_raw/DatasetXXX_Name (converted dataset)")
    parser.add_argument("--train-masks", help="masks of the development cases (default: the dataset's labelsTr)")
    parser.add_argument("--test-masks", required=True,
                        help="masks of the cases to predict (labelsTs or nnUNetv2_predict's output folder)")
    parser.add_argument("--features", choices=FEATURE_SETS, required=True,
                        help="quantities: the network's log volume + channel means; texture: IBSI-style radiomics")
    parser.add_argument("--feature-columns", nargs="+",
                        help="use only these feature columns (e.g. log1p_volume_mm3 mean_ADC)")
    parser.add_argument("--clinical", action="store_true",
                        help="add the pretreatment + postoperative clinical features")
    parser.add_argument("--horizon", type=float, help="months of p_recurrence_<H>m (default: dataset.json's)")
    parser.add_argument("--l1-ratio", type=float, default=0.5, help="elastic-net mixing, (0, 1] (default 0.5)")
    parser.add_argument("--cv-folds", type=int, default=5, help="internal folds choosing the penalty (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the internal folds (default 0)")
    parser.add_argument("--fit-json", help="write the chosen penalty, internal C and coefficients here")
    parser.add_argument("-o", "--output", required=True, help="predictions CSV")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; 0 on success, 2 on bad input (``error: ...``)."""
    args = build_parser().parse_args(argv)
    try:
        predictions, model = run_baseline(args.raw_dataset, args.test_masks, args.features, args.train_masks,
                                          args.clinical, args.feature_columns, args.horizon, args.l1_ratio,
                                          args.cv_folds, args.seed)
    except MultitaskError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(args.output, index=False)
    if args.fit_json:
        Path(args.fit_json).write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    best_c = model.internal_c.get(model.alpha, float("nan"))
    print(f"{args.features}{' + clinical' if args.clinical else ''}: {len(model.features)} feature(s), "
          f"alpha {model.alpha:.4g} (internal C {best_c:.3f}, {model.n_splits} folds), "
          f"{int((np.abs(list(model.coefficients().values())) > 0).sum())} non-zero coefficient(s); "
          f"{len(predictions)} case(s) predicted -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
