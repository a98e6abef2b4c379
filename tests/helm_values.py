"""Helm's merge of user values over chart defaults, shared by the chart tests.

No Helm import here: tests/test_helm.py runs under Python 3.11 and
tests/helm_lint.py under .venv-helm (3.12, with helm-sdkpy); both use this.
"""

from __future__ import annotations

import copy
from typing import Any


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of user values into chart defaults: maps merge, null deletes."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
