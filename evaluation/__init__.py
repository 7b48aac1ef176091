"""Evaluation of recurrence / disease-free-survival predictions (command line: ``survival_eval.py``).

inputs        prediction and outcome files (outcomes through ``clinical.tables.read_follow_up_table``)
metrics       Harrell's C (the project's one definition), its vectorised bootstrap, DeLong, KM, Dice
set_metrics   one helper per metric of one model on one set; ``evaluate_set``
compare       model vs model: paired bootstrap C-index difference, DeLong test
segmentation  Dice per case and per set
report        report.md and the descriptive parts of metrics.json
figures       Kaplan-Meier, ROC and calibration PNGs
pipeline      ``evaluate``: everything above, then the report folder
survival_eval the command line (``python evaluation/survival_eval.py``, ``multitask_survival_eval``)
"""
