"""The null check of a synthetic cohort: do the hand-made tumour quantities rank its patients?

A cohort built to hold image risk only where the network's hand-made quantities are blind
(heterogeneity, margin, extramural extension, EMVI, nodes: issue 19) is what it claims only if
those quantities carry no risk there. This module measures it: the quantities of
:func:`evaluation.radiomics.quantity_features` (log(1 + tumour volume in mm^3) and the mean of T2,
ADC, Dapp and Kapp inside the tumour), a Cox proportional-hazards model fitted out of fold, and
Harrell's C of the out-of-fold risks with a bootstrap confidence interval.

The verdict
-----------
The check **fails** (``carries_risk``) when the interval lies above 0.5 and the likelihood-ratio
test below rejects "no association" at ``LR_ALPHA`` (0.05): a Cox model on the quantities ranks
unseen patients better than chance. Both are asked because the bootstrap interval resamples the
pooled out-of-fold risks but not the fits, so under no association it is narrower than the C-index
really varies (SD 0.06 over permutations against an interval half-width of about 0.08) and its lower
bound alone exceeds 0.5 more often than 2.5 % of the time. ``covers_chance`` (the interval contains 0.5)
is reported as well, but it is not the verdict, because an out-of-fold C-index is biased
*downwards* where the features carry no risk: when the whole sample shows almost no association,
each training part holds the opposite of its held-out fold's chance association, so the fold
models rank their held-out patients the wrong way round. On the findings-only cohort of the tests
(200 patients, seed 0; measured when this was written) the out-of-fold C is 0.37 (95 % CI
0.29-0.45) although each quantity's own C is 0.48-0.52 and the likelihood-ratio test of the Cox
model on all five gives p = 0.99; with the outcomes permuted, the same out-of-fold C has mean 0.50
and SD 0.06 (100 permutations), wider than the bootstrap interval, which resamples the pooled
risks but not the fits. An interval below 0.5 therefore says "no usable risk", not "risk". The
likelihood-ratio test (``lr_p_value``: the Cox model on every feature against the empty model, in
sample, chi-square with one degree of freedom per non-constant feature) is reported beside it as
the unbiased test of any association.

The check is marginal: it asks whether the quantities rank the patients, not whether they add to
the clinical terms of the hazard. Where tumour volume shares a cause with those terms, the
quantities carry risk through them and the check fails, as it should for an image-only comparison.

* :func:`quantities_null_check` reads a cohort folder (``clinical.csv`` with ``patient_id``,
  ``dfs_months``, ``dfs_event``; ``images/<patient_id>/{T2,ADC,Dapp,Kapp,mask}.nii.gz``) and
  computes the quantities on the reference mask, the diffusion maps resampled onto the T2 grid
  by the converter's own function (``dataset_conversion.convert_larc.resample_onto``).
* :func:`null_check_from_features` takes any feature table (e.g. the quantities of predicted masks
  from :func:`evaluation.radiomics.extract_dataset_features`) and the follow-up.

Out of fold: a stratified K-fold (by event, seeded); in each fold median imputation,
standardisation and ``sksurv.linear_model.CoxPHSurvivalAnalysis`` (a ridge of 1e-4, only for
numerical safety: a constant column would make the Hessian singular) are fitted on the other
folds and predict the held-out fold; the out-of-fold risks of all folds are pooled into one C-index
(:func:`evaluation.metrics.harrell_c`). The interval is the percentile interval of
:func:`evaluation.metrics.bootstrap_harrell_c` over resamples of the patients (seeded); it
resamples the pooled risks, not the fits.

Command line::

    python -m evaluation.null_check --cohort DIR [--n-splits 5] [--seed 0] [--n-boot 1000] \
        [--intensity raw|zscore] [--json result.json]

exits 0 when the check passes, 1 when it fails (the quantities carry risk), 2 on bad input (an
``error:`` line naming the patient and the file), 3 when the check could not be computed (an
``error:`` line with the reason; never read as a verdict).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from clinical.errors import MultitaskError
from clinical.tables import ClinicalTableError, read_follow_up_table
from evaluation.metrics import bootstrap_harrell_c, harrell_c_with_reason, percentile_ci
from evaluation.radiomics import RadiomicsInputError, feature_names, quantity_features

__all__ = ["NullCheckError", "NullCheckResult", "SERIES", "cohort_quantities", "cohort_survival",
           "null_check_from_features", "quantities_null_check", "build_parser", "main"]

#: Series of a cohort folder, in nnU-Net channel order (T2 defines the grid).
SERIES = ("T2", "ADC", "Dapp", "Kapp")
MASK_FILE = "mask.nii.gz"
INTENSITIES = ("raw", "zscore")
#: Ridge penalty of the out-of-fold Cox fits (numerical safety only).
RIDGE = 1e-4
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_COMPUTED = 1, 2, 3
#: the likelihood-ratio test must also reject "no association" at this level for the check to fail
LR_ALPHA = 0.05


class NullCheckError(MultitaskError, ValueError):
    """Bad input of the null check; the message names the patient and the file."""


# --------------------------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------------------------
def _check_cohort(cohort_dir: Path) -> Path:
    """The cohort's ``clinical.csv``, after checking the folder layout."""
    if not cohort_dir.is_dir():
        raise NullCheckError(f"cohort folder {cohort_dir} does not exist")
    for needed in ("clinical.csv", "images"):
        if not (cohort_dir / needed).exists():
            raise NullCheckError(f"cohort folder {cohort_dir} has no {needed}")
    return cohort_dir / "clinical.csv"


def _check_survival(survival, n_cases: int) -> Tuple[np.ndarray, np.ndarray]:
    """(event bool, time float) of an ``sksurv.util.Surv`` structured array of ``n_cases`` rows."""
    survival = np.asarray(survival)
    names = survival.dtype.names
    if names is None or len(names) != 2 or survival.ndim != 1:
        raise NullCheckError("survival must be a 1-D structured array (event, time), e.g. "
                             "sksurv.util.Surv.from_arrays(event, time)")
    if len(survival) != n_cases:
        raise NullCheckError(f"survival has {len(survival)} rows for {n_cases} feature rows")
    event, time = survival[names[0]].astype(bool), survival[names[1]].astype(float)
    if not np.all(np.isfinite(time)) or np.any(time <= 0):
        raise NullCheckError("survival times must be finite and > 0")
    return event, time


def _check_options(n_splits: int, n_boot: int, level: float, event: np.ndarray) -> None:
    if int(n_splits) < 2:
        raise NullCheckError(f"n_splits must be >= 2, got {n_splits}")
    if int(n_boot) < 1:
        raise NullCheckError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(level) < 1.0:
        raise NullCheckError(f"level must be in (0, 1), got {level}")
    if min(int(event.sum()), int((~event).sum())) < int(n_splits):
        raise NullCheckError(f"{int(event.sum())} event(s) and {int((~event).sum())} censored case(s): a "
                             f"stratified {n_splits}-fold split needs at least {n_splits} of each")


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@dataclass
class NullCheckResult:
    """Harrell's C of out-of-fold Cox risks on the quantities, with its bootstrap interval.

    Attributes
    ----------
    c_index : float
        Harrell's C of the pooled out-of-fold risks.
    ci : (float, float)
        Percentile bootstrap interval at ``level``.
    covers_chance : bool
        Whether ``ci`` contains 0.5.
    carries_risk : bool
        Whether ``ci`` lies above 0.5 *and* the likelihood-ratio test rejects no association at
        ``LR_ALPHA``: the check fails (module docstring, "The verdict").
    lr_p_value : float
        Likelihood-ratio test of the in-sample Cox model on every feature against the empty model.
    out_of_fold_risk : pandas.Series
        Each case's risk from the fold model that did not see it.
    """

    c_index: float
    ci: Tuple[float, float]
    covers_chance: bool
    carries_risk: bool
    lr_statistic: float
    lr_df: int
    lr_p_value: float
    n_cases: int
    n_events: int
    n_splits: int
    n_boot: int
    seed: int
    level: float
    features: List[str] = field(default_factory=list)
    out_of_fold_risk: Optional[pd.Series] = None

    def to_dict(self) -> dict:
        return {"c_index": self.c_index, "ci_low": self.ci[0], "ci_high": self.ci[1], "level": self.level,
                "covers_chance": self.covers_chance, "carries_risk": self.carries_risk, "passed": self.passed,
                "lr_statistic": self.lr_statistic, "lr_df": self.lr_df, "lr_p_value": self.lr_p_value,
                "n_cases": self.n_cases, "n_events": self.n_events,
                "n_splits": self.n_splits, "n_boot": self.n_boot, "seed": self.seed, "features": self.features}

    @property
    def passed(self) -> bool:
        """The check's verdict: the quantities do not rank unseen patients better than chance."""
        return not self.carries_risk

    def summary(self) -> str:
        if self.carries_risk:
            verdict = "FAIL, the interval lies above 0.5 and the likelihood-ratio test rejects: the features carry risk"
        elif self.ci[0] > 0.5:
            verdict = (f"PASS, the interval lies above 0.5 but the likelihood-ratio test does not reject "
                       f"(p >= {LR_ALPHA})")
        else:
            verdict = "PASS, " + ("the interval covers 0.5" if self.covers_chance else
                                  "the interval lies below 0.5 (out-of-fold bias under no association)")
        return (f"Harrell's C of out-of-fold CoxPH on {len(self.features)} feature(s) = {self.c_index:.3f} "
                f"({self.level:.0%} CI {self.ci[0]:.3f}-{self.ci[1]:.3f}; {self.n_cases} cases, {self.n_events} "
                f"events, {self.n_splits} folds, {self.n_boot} resamples, seed {self.seed}); likelihood-ratio "
                f"p = {self.lr_p_value:.3g} ({self.lr_df} df): {verdict}")


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def _out_of_fold_risk(x: pd.DataFrame, event: np.ndarray, time: np.ndarray, n_splits: int,
                      seed: int) -> np.ndarray:
    """Each case's Cox linear predictor from the model fitted on the other folds."""
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    y = Surv.from_arrays(event, time)
    risk = np.full(len(x), np.nan)
    for train, test in StratifiedKFold(int(n_splits), shuffle=True, random_state=seed).split(x, event):
        model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                              CoxPHSurvivalAnalysis(alpha=RIDGE))
        model.fit(x.iloc[train], y[train])
        risk[test] = model.predict(x.iloc[test])
    return risk


def _cox_log_likelihood(eta: np.ndarray, event: np.ndarray, time: np.ndarray) -> float:
    """Cox partial log-likelihood with Breslow's handling of ties (the risk set of an event at t is
    every case with time >= t, as scikit-survival's ``CoxPHSurvivalAnalysis(ties="breslow")``)."""
    at_risk = time[None, :] >= time[event][:, None]
    shifted = eta - eta.max()
    log_risk_sums = np.log((at_risk * np.exp(shifted)[None, :]).sum(axis=1)) + eta.max()
    return float((eta[event] - log_risk_sums).sum())


def _likelihood_ratio(x: pd.DataFrame, event: np.ndarray, time: np.ndarray) -> Tuple[float, int, float]:
    """(statistic, df, p) of the in-sample Cox model on every non-constant feature against the empty model."""
    from scipy.stats import chi2
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                          CoxPHSurvivalAnalysis(alpha=RIDGE)).fit(x, Surv.from_arrays(event, time))
    eta = model.predict(x)
    statistic = max(0.0, 2.0 * (_cox_log_likelihood(eta - eta.mean(), event, time)
                                - _cox_log_likelihood(np.zeros(len(x)), event, time)))
    df = int((x.nunique(dropna=True) > 1).sum())
    return statistic, df, float(chi2.sf(statistic, df)) if df else 1.0


def null_check_from_features(features: pd.DataFrame, survival, n_splits: int = 5, seed: int = 0,
                             n_boot: int = 1000, level: float = 0.95) -> NullCheckResult:
    """The null check on a feature table.

    Parameters
    ----------
    features : DataFrame, shape (n_cases, n_features)
        One row per case (e.g. the quantities of reference or predicted masks); NaN = missing,
        imputed by the median of each fold's training part.
    survival : structured array, shape (n_cases,)
        ``sksurv.util.Surv.from_arrays(event, time)`` in the row order of ``features``.
    n_splits : int
        Folds of the out-of-fold fit (stratified by event).
    seed : int
        Seed of the folds and of the bootstrap resamples.
    n_boot : int
        Bootstrap resamples of the interval.
    level : float
        Coverage of the interval.

    Returns
    -------
    NullCheckResult
    """
    if not isinstance(features, pd.DataFrame) or features.shape[1] == 0 or len(features) == 0:
        raise NullCheckError("features must be a non-empty DataFrame (one row per case)")
    event, time = _check_survival(survival, len(features))
    _check_options(n_splits, n_boot, level, event)
    x = features.apply(pd.to_numeric, errors="raise").astype(float)
    risk = _out_of_fold_risk(x, event, time, n_splits, seed)
    c_index, reason = harrell_c_with_reason(time, event, risk)
    if reason is not None:
        raise NullCheckError(f"Harrell's C is undefined: {reason}")
    ci = percentile_ci(bootstrap_harrell_c(time, event, risk, int(n_boot), seed)[0], level)
    if ci is None:
        raise NullCheckError("no bootstrap resample had a comparable pair")
    lr_statistic, lr_df, lr_p_value = _likelihood_ratio(x, event, time)
    carries_risk = bool(ci[0] > 0.5 and lr_p_value < LR_ALPHA)
    return NullCheckResult(c_index, ci, bool(ci[0] <= 0.5 <= ci[1]), carries_risk, lr_statistic, lr_df,
                           lr_p_value, len(x), int(event.sum()), int(n_splits),
                           int(n_boot), int(seed), float(level), list(x.columns),
                           pd.Series(risk, index=features.index, name="out_of_fold_risk"))


# --------------------------------------------------------------------------------------------
# Cohort folder
# --------------------------------------------------------------------------------------------
def cohort_survival(cohort_dir, time_column: str = "dfs_months", event_column: str = "dfs_event") -> pd.DataFrame:
    """The cohort's follow-up, indexed by ``patient_id`` (validated by the project's outcomes reader)."""
    path = _check_cohort(Path(cohort_dir))
    try:
        return read_follow_up_table(path, time_column, event_column, id_column="patient_id", keep_columns=())
    except ClinicalTableError as error:
        raise NullCheckError(str(error)) from None


def _read(path: Path, patient: str):
    import SimpleITK as sitk

    if not path.is_file():
        raise NullCheckError(f"patient {patient}: missing file {path}")
    try:
        return sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as error:
        raise NullCheckError(f"patient {patient}: cannot read {path}: {str(error).strip().splitlines()[0]}") from None


def _zscore(channel: np.ndarray) -> np.ndarray:
    """nnU-Net's ``ZScoreNormalization`` without a mask: (x - mean) / max(sd, 1e-8) over the image."""
    return (channel - channel.mean()) / max(float(channel.std()), 1e-8)


def _patient_quantities(folder: Path, patient: str, intensity: str) -> dict:
    """The quantities of one patient on the reference mask, diffusion maps resampled onto T2."""
    import SimpleITK as sitk

    from nnunet_multitask.contract import resample_onto

    t2 = _read(folder / "T2.nii.gz", patient)
    mask_image = _read(folder / MASK_FILE, patient)
    if mask_image.GetSize() != t2.GetSize():
        raise NullCheckError(f"patient {patient}: {folder / MASK_FILE} (size {mask_image.GetSize()}) is not on the "
                             f"T2 grid (size {t2.GetSize()})")
    names, arrays = ["T2"], [sitk.GetArrayFromImage(t2)]
    for series in SERIES[1:]:
        path = folder / f"{series}.nii.gz"
        if path.is_file():  # a series the cohort lacks gives a NaN mean, imputed out of fold
            names.append(series)
            arrays.append(sitk.GetArrayFromImage(resample_onto(_read(path, patient), t2)))
    if intensity == "zscore":
        arrays = [_zscore(a.astype(float)) for a in arrays]
    try:
        return quantity_features(np.stack(arrays), sitk.GetArrayFromImage(mask_image), t2.GetSpacing()[::-1], names)
    except RadiomicsInputError as error:
        raise NullCheckError(f"patient {patient} ({folder}): {error}") from None


def cohort_quantities(cohort_dir, intensity: str = "zscore", patients: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The hand-made quantities of every patient of a cohort folder, on the reference mask.

    Parameters
    ----------
    cohort_dir : path
        Cohort folder (module docstring).
    intensity : {"raw", "zscore"}
        ``raw``: the intensities as stored (absolute diffusion levels); ``zscore``: each channel of
        each patient standardised over the whole image first, as nnU-Net's ``ZScoreNormalization``
        does before the network computes its quantities (without nnU-Net's crop to the non-zero box).
    patients : sequence of str, optional
        Default: every patient of ``clinical.csv``.

    Returns
    -------
    DataFrame indexed by ``patient_id``, columns ``log1p_volume_mm3``, ``mean_T2`` ... ``mean_Kapp``.
    """
    if intensity not in INTENSITIES:
        raise NullCheckError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")
    cohort_dir = Path(cohort_dir)
    if patients is None:
        patients = list(cohort_survival(cohort_dir).index)
    rows = {p: _patient_quantities(cohort_dir / "images" / p, p, intensity) for p in patients}
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=feature_names("quantities", SERIES))
    frame.index.name = "patient_id"
    return frame


def quantities_null_check(cohort_dir, n_splits: int = 5, seed: int = 0, n_boot: int = 1000,
                          level: float = 0.95, intensity: str = "zscore") -> NullCheckResult:
    """The null check of a cohort folder: out-of-fold CoxPH on the reference-mask quantities.

    Parameters
    ----------
    cohort_dir : path
        Cohort folder (module docstring).
    n_splits, seed, n_boot, level
        See :func:`null_check_from_features`.
    intensity : {"raw", "zscore"}
        See :func:`cohort_quantities`.

    Returns
    -------
    NullCheckResult
        ``passed`` is the verdict (False when the interval lies above 0.5).
    """
    from sksurv.util import Surv

    follow_up = cohort_survival(cohort_dir)
    features = cohort_quantities(cohort_dir, intensity, list(follow_up.index))
    survival = Surv.from_arrays(follow_up["dfs_event"].to_numpy().astype(bool),
                                follow_up["dfs_months"].to_numpy(dtype=float))
    return null_check_from_features(features, survival, n_splits, seed, n_boot, level)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", required=True, help="synthetic (or real) cohort folder")
    parser.add_argument("--n-splits", type=int, default=5, help="out-of-fold splits (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default 0)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--intensity", choices=INTENSITIES, default="zscore",
                        help="zscore: nnU-Net-like per-image z-scores, what the network reads (raw intensities "
                             "carry each centre's scanner scale, and with it the centre's case mix); or raw "
                             "(default zscore)")
    parser.add_argument("--json", help="write the result here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """0 when the check passes, 1 when it fails, 2 on bad input, 3 when it could not be computed."""
    args = build_parser().parse_args(argv)
    try:
        result = quantities_null_check(args.cohort, args.n_splits, args.seed, args.n_boot, intensity=args.intensity)
        if args.json:  # written before the verdict is printed, so a printed verdict always has its file
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(dict(result.to_dict(), intensity=args.intensity), indent=2)
                                       + "\n")
    except MultitaskError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001  (a crash must not read as "fails": exit 1 is the verdict)
        print(f"error: the null check could not be computed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_NOT_COMPUTED
    print(f"{args.cohort}: {result.summary()}")
    return 0 if result.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
