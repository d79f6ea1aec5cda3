"""MLflow's REST JSON, as both ends of Runyard speak it: the agent's endpoint for runs, the head's read API.

Must not: import anything but the standard library (the agent and the head both use it).
"""

from __future__ import annotations

import math
from typing import Any


def metric_json(key: str, value: float, timestamp_ms: int | None, step: int) -> dict[str, Any]:
    """One metric point as MLflow's `Metric` message in JSON: NaN and the infinities as protobuf writes them."""
    return {"key": key, "value": _number(value), "timestamp": timestamp_ms, "step": step}


def error_json(code: str, message: str) -> dict[str, str]:
    """MLflow's error body (`INVALID_PARAMETER_VALUE`, `RESOURCE_DOES_NOT_EXIST`, ...)."""
    return {"error_code": code, "message": message}


def _number(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value
