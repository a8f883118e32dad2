"""Fuzzing every public component (issue 10 D): each call returns finite, correctly shaped output
or raises ValueError/TypeError; no other exception and no silent NaN.

Small, deterministic CI profile (``derandomize=True``); ``benchmarks/fuzz.py`` runs the same
strategies (``tests/fuzz_strategies.py``) with thousands of cases.
"""

from __future__ import annotations

import pytest
from fuzz_strategies import BUGS, STRATEGIES, Case, outcome
from hypothesis import HealthCheck, given, settings

CI = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_component_raises_value_or_type_error_or_returns_finite_output(name):
    seen: set[str] = set()

    @CI
    @given(case=STRATEGIES[name]())
    def check(case: Case) -> None:
        kind, detail = outcome(case)
        seen.add(kind)
        assert kind not in BUGS, f"{kind}: {case.what}: {detail}"

    check()
    assert "ok" in seen  # the strategies also reach the valid path, not only the errors
