"""MONAI Deploy (Holoscan) operators: thin shells over the plain functions in :mod:`operators`.

Importing an operator imports Holoscan, which needs its CUDA runtime library on the library path
(see the Makefile). The names are resolved lazily so that importing this package, or one operator
module, does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FemurStudyLoaderOperator": "operators.deploy.study_loader_operator",
    "FemurLesionOperator": "operators.deploy.lesion_operator",
    "StudyOutputsOperator": "operators.deploy.outputs_operator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
