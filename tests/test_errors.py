"""One exception base (issue 22 item 6): every user-facing error of the project derives from
``clinical.errors.MultitaskError`` and keeps its built-in base, so each command line catches one
type and library callers catching ``ValueError`` / ``RuntimeError`` keep working."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from clinical.errors import MultitaskError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("clinical", "nnunet_multitask", "dataset_conversion", "evaluation")


def _error_classes():
    """(module, class name) of every class named *Error defined in the project's packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            tree = ast.parse(path.read_text())
            module = f"{package}.{path.stem}"
            found += [(module, node.name) for node in tree.body if isinstance(node, ast.ClassDef)
                      and node.name.endswith("Error") and node.name != MultitaskError.__name__]
    return found


@pytest.mark.parametrize("module, name", _error_classes())
def test_every_project_error_derives_from_the_one_base(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, MultitaskError), f"{module}.{name} does not derive from MultitaskError"
    assert issubclass(cls, (ValueError, RuntimeError)), f"{module}.{name} lost its built-in base"


def test_the_base_is_found():
    assert len(_error_classes()) >= 15
