"""Where the trainer classes live (fast, no training).

``trainers/`` holds what users train; ``benchmarks/trainers/`` the benchmark variants (``*_quality``,
``*_bench``). nnU-Net finds both through ``nnUNet_extTrainer=<repo>/trainers<os.pathsep><repo>/benchmarks/
trainers``. The benchmark variants are product classes plus a length mixin, and the drift check below
keeps it so: each one's configuration equals its product base's except the training length and the
overrides an ablation declares here (attributes, or methods replaced by the override classes of
``benchmarks/trainers``: the product base class has no switch for them).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from pathlib import Path

import pytest

import trainers
from nnunet_multitask.trainer import MultiRecTrainerBase
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

REPO = Path(__file__).resolve().parents[1]
PRODUCT_DIR = REPO / "trainers"
BENCH_DIR = REPO / "benchmarks" / "trainers"
BENCH_MARKERS = ("_quality", "_bench")

#: every configuration attribute of a MultiRec trainer (the annotated class attributes of the base)
CONFIG_ATTRS = tuple(sorted(MultiRecTrainerBase.__annotations__))
#: what a benchmark variant may change against its product base: the training length
LENGTH_ATTRS = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "save_every_epochs")
#: methods a budget mixin replaces (batch-size cap, no final validation)
BUDGET_METHODS = ("_set_batch_size_and_oversample", "perform_actual_validation")
#: marks a method an ablation replaces in EXPECTED
OVERRIDE = "method override"

#: benchmark variant -> (its product base in trainers.multirec, what it overrides besides the length)
EXPECTED = {
    "MultiRecTrainer_quality": ("MultiRecTrainer", {}),
    "MultiRecTrainer_Pre_quality": ("MultiRecTrainer_Pre", {}),
    "MultiRecTrainer_MRI_quality": ("MultiRecTrainer_MRI", {}),
    "MultiRecTrainer_T2_quality": ("MultiRecTrainer_T2", {}),
    "MultiRecTrainer_Cox_quality": ("MultiRecTrainer_Cox", {}),
    "MultiRecTrainer_ModalityDropout_quality": ("MultiRecTrainer_ModalityDropout", {}),
    "MultiRecTrainer_ROI_quality": ("MultiRecTrainer_ROI", {}),
    "MultiRecTrainer_MRI_ROI_quality": ("MultiRecTrainer_MRI_ROI", {}),
    "MultiRecTrainer_quality_consistency": ("MultiRecTrainer", {"_build_loss": OVERRIDE,
                                                                "consistency_loss": OVERRIDE}),
    "MultiRecTrainer_Cox_quality_oldmemory": ("MultiRecTrainer_Cox", {"cox_loss": OVERRIDE}),
    "MultiRecTrainer_MRI_quality_firstdesign": ("MultiRecTrainer_MRI", {"image_features": "global_pool",
                                                                        "configure_optimizers": OVERRIDE,
                                                                        "_optimisation_step": OVERRIDE,
                                                                        "_initialise_output_biases": OVERRIDE,
                                                                        "min_tumour_fraction": 0.0}),
    "MultiRecTrainer_MRI_quality_globalpool": ("MultiRecTrainer_MRI", {"image_features": "global_pool"}),
    "MultiRecTrainer_MRI_quality_quantities_sgd": ("MultiRecTrainer_MRI", {"configure_optimizers": OVERRIDE,
                                                                           "_optimisation_step": OVERRIDE}),
    "MultiRecTrainer_MRI_quality_quantities_pool": ("MultiRecTrainer_MRI",
                                                    {"image_features": "tumour_quantities+tumour_pool"}),
    "MultiRecTrainer_MRI_quality_x4": ("MultiRecTrainer_MRI", {}),
    "MultiRecTrainer_quality_x4": ("MultiRecTrainer", {}),
    "MultiRecTrainer_bench": ("MultiRecTrainer", {}),
}


def _trainer_classes(module) -> dict:
    """The nnU-Net trainer classes a module defines (not the ones it imports)."""
    return {name: obj for name, obj in vars(module).items()
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and issubclass(obj, nnUNetTrainer)}


def _product_modules() -> list:
    return [importlib.import_module(f"trainers.{m.name}") for m in pkgutil.iter_modules(trainers.__path__)]


def _bench_modules() -> dict:
    """Each ``benchmarks/trainers/*.py`` loaded under a private name (nnU-Net imports them as top-level
    modules and drops them again; the stem is what its classes' ``__module__`` says there)."""
    modules = {}
    for path in sorted(BENCH_DIR.glob("*.py")):
        name = f"_layout_test_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules[path.stem] = module
    return modules


@pytest.fixture(scope="module")
def bench_classes() -> dict:
    """``{class name: (module stem, class)}`` of every benchmark trainer."""
    out = {}
    for stem, module in _bench_modules().items():
        for name, cls in _trainer_classes(module).items():
            assert name not in out, f"{name} defined twice in benchmarks/trainers"
            out[name] = (stem, cls)
    assert out, f"no trainer classes found in {BENCH_DIR}"
    return out


def test_product_folder_is_user_facing():
    found = {}
    for module in _product_modules():
        for name, cls in _trainer_classes(module).items():
            found[name] = cls
            assert not any(marker in name for marker in BENCH_MARKERS), (
                f"{module.__name__}.{name} is a benchmark variant: it belongs in benchmarks/trainers/")
    assert "MultiRecTrainer" in found and "MultiRecTrainer_smoke" in found
    assert not (PRODUCT_DIR / "quality_variants.py").exists() and not (PRODUCT_DIR / "bench_variants.py").exists()


def test_benchmark_folder_holds_only_benchmark_variants(bench_classes):
    product = {name for module in _product_modules() for name in _trainer_classes(module)}
    for name in bench_classes:
        assert any(marker in name for marker in BENCH_MARKERS), f"{name}: name benchmark trainers *_quality, *_bench"
        assert name not in product, f"{name} exists in trainers/ too: nnU-Net would find that one first"
    # no __init__.py: as a regular package, benchmarks/trainers would shadow the installed `trainers`
    # package for scripts run from benchmarks/ (their folder is sys.path[0])
    assert not (BENCH_DIR / "__init__.py").exists()


def test_nnunet_finds_every_trainer_with_both_folders(monkeypatch, bench_classes):
    # nnunetv2.paths.nnUNet_extTrainer reads the environment at each lookup
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(PRODUCT_DIR), str(BENCH_DIR)]))
    for name, (stem, _) in bench_classes.items():
        cls = recursive_find_trainer_class_by_name(name)
        assert (cls.__name__, cls.__module__) == (name, stem), f"{name} resolved to {cls.__module__}.{cls.__name__}"
    for name in ("MultiRecTrainer", "MultiRecTrainer_smoke", "MultiRecTrainer_demo"):
        cls = recursive_find_trainer_class_by_name(name)
        assert (cls.__name__, cls.__module__) == (name, "multirec")


def _product_base(cls):
    """The first class of ``cls``'s MRO that users train (defined in ``trainers/``)."""
    return next(k for k in cls.__mro__[1:] if k.__module__.split(".")[0] == "trainers")


def _replaced_methods(cls, base) -> dict:
    """Methods defined between ``cls`` and its product base ``base`` in the MRO (the variant and its
    override classes), besides the budget's."""
    names = set()
    for k in cls.__mro__:
        if k is base:
            break
        names |= {n for n, v in vars(k).items() if callable(v) and not n.startswith("__")}
    return {n: OVERRIDE for n in names - set(BUDGET_METHODS)}


def test_benchmark_variants_do_not_drift_from_the_product(bench_classes):
    multirec = {name: cls for name, (_, cls) in bench_classes.items() if issubclass(cls, MultiRecTrainerBase)}
    assert set(multirec) == set(EXPECTED), ("update EXPECTED (product base and overrides) for new or removed "
                                            f"variants: {sorted(set(multirec) ^ set(EXPECTED))}")
    for name, cls in multirec.items():
        base_name, overrides = EXPECTED[name]
        base = _product_base(cls)
        assert base.__name__ == base_name, f"{name} derives from {base.__name__}, expected {base_name}"
        differs = {a: getattr(cls, a) for a in CONFIG_ATTRS
                   if a not in LENGTH_ATTRS and getattr(cls, a) != getattr(base, a)}
        differs.update(_replaced_methods(cls, base))
        assert differs == overrides, f"{name}: configuration differs from {base_name} in {differs}"


def test_quality_variants_share_one_budget(bench_classes):
    mixin = sys.modules["_layout_test_quality_variants"]._QualityLength
    for name, (stem, cls) in bench_classes.items():
        if stem != "quality_variants" or not issubclass(cls, MultiRecTrainerBase):
            continue
        for a in LENGTH_ATTRS:
            want = 4 * mixin.epochs if (a == "epochs" and name.endswith("_x4")) else getattr(mixin, a, None)
            assert getattr(cls, a) == want, f"{name}.{a} = {getattr(cls, a)}, the quality budget says {want}"
        for m in BUDGET_METHODS:  # batch size capped, no final validation: the budget's own methods
            assert getattr(cls, m) is getattr(mixin, m), f"{name}.{m} is not the quality budget's"


def test_product_trainer_has_no_benchmark_switches():
    """The ablations and budgets are overrides in benchmarks/trainers, not attributes of the product base."""
    for gone in ("skip_final_validation", "max_batch_size", "head_optimizer", "init_output_biases",
                 "lambda_consistency", "cox_normalise", "cox_memory_one_entry_per_case", "whole_fold_validation"):
        assert not hasattr(MultiRecTrainerBase, gone), gone


def test_demo_trainers_cap_the_batch_size():
    from nnunet_multitask import trainer as T
    from trainers import multirec
    calls = []

    class Stub:
        def _set_batch_size_and_oversample(self):
            calls.append("nnU-Net")

    class Demo(multirec._DemoLength, Stub):
        pass

    capped = []
    original = T.cap_batch_size
    try:
        multirec.cap_batch_size = lambda trainer, n: capped.append(n)
        Demo()._set_batch_size_and_oversample()
    finally:
        multirec.cap_batch_size = original
    assert calls == ["nnU-Net"] and capped == [multirec.DEMO_BATCH_SIZE] == [2]
    assert issubclass(multirec.MultiRecTrainer_demo, multirec._DemoLength)


def test_plain_nnunet_variants_stay_nnunet_trainers(bench_classes):
    for name in ("nnUNetTrainer_quality", "nnUNetTrainer_bench"):
        cls = bench_classes[name][1]
        assert issubclass(cls, nnUNetTrainer) and not issubclass(cls, MultiRecTrainerBase)
