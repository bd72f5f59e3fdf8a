"""Promotion requirements: ``schema_valid>=0.95`` parsed, checked against an evaluation's metrics, explained."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from jnreg.errors import ConfigError

# Metrics every evaluation reports (see core/evaluation/evaluate.py); exact_match.<field> adds one per compared field.
METRICS = ("rows", "eval_loss", "json_rate", "schema_valid", "exact_match", "tokens_per_second")
EXACT_PREFIX = "exact_match."
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
_REQUIREMENT = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)?)\s*(?P<op>>=|<=|==|>|<)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Requirement:
    """One ``METRIC OP NUMBER`` condition a version's evaluation must meet."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def met_by(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)


def parse_requirement(text: str, fields: Iterable[str] | None = None) -> Requirement:
    """``text`` as a Requirement; ``fields``, when given, are the response fields exact_match.<field> may name."""
    if not isinstance(text, str):
        raise ConfigError(f"requirement {text!r} must be a string like 'schema_valid>=0.95'")
    match = _REQUIREMENT.match(text)
    if match is None:
        raise ConfigError(
            f"malformed requirement {text!r}: write METRIC OP NUMBER, e.g. 'schema_valid>=0.95' "
            f"(operators {', '.join(OPERATORS)})"
        )
    metric, threshold = match["metric"], float(match["value"])
    if metric.startswith(EXACT_PREFIX):
        known = sorted(fields) if fields is not None else None
        if known is not None and metric[len(EXACT_PREFIX) :] not in known:
            raise ConfigError(
                f"unknown metric {metric!r} in requirement {text!r}: the response has no field "
                f"{metric[len(EXACT_PREFIX) :]!r} (fields: {', '.join(known) or 'none'})"
            )
    elif metric not in METRICS:
        raise ConfigError(
            f"unknown metric {metric!r} in requirement {text!r}; metrics: {', '.join(METRICS)}, {EXACT_PREFIX}<field>"
        )
    if not math.isfinite(threshold):
        raise ConfigError(f"requirement {text!r} needs a finite number")
    return Requirement(metric, match["op"], threshold)


def response_fields(schema: Mapping | None) -> list[str] | None:
    """Top-level field names of a response schema, or None when there is no schema to say."""
    if not schema or not isinstance(schema.get("properties"), Mapping):
        return None
    return sorted(schema["properties"])


def parse_requirements(texts: Iterable[str], schema: Mapping | None = None) -> list[Requirement]:
    fields = response_fields(schema)
    return [parse_requirement(text, fields) for text in texts]


def shortfalls(requirements: Iterable[Requirement], metrics: Mapping[str, float | int | None]) -> list[str]:
    """One ``metric value op-failed threshold`` phrase per requirement the metrics do not meet."""
    missed = []
    for requirement in requirements:
        value = metrics.get(requirement.metric)
        if value is None:
            missed.append(f"{requirement.metric} not reported (required {requirement.op} {requirement.threshold:g})")
        elif not requirement.met_by(float(value)):
            missed.append(f"{requirement.metric} {value:.4g} (required {requirement.op} {requirement.threshold:g})")
    return missed
