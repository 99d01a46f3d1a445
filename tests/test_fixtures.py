"""Golden Metacontroller bodies, sent by the same script a person uses, to the hook served by a real uvicorn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def test_every_case_has_a_request_an_expected_answer_and_a_call() -> None:
    cases = sorted(p.parent.name for p in FIXTURES.glob("*/request.json"))
    assert {"new-object", "existing-children", "changed-spec", "certificates-present", "invalid-spec", "finalizing",
            "original-example", "customize"} <= set(cases)  # fmt: skip
    for case in cases:
        call = json.loads((FIXTURES / case / "call.json").read_text())
        assert call["path"] in ("/sync", "/customize")
        json.loads((FIXTURES / case / "response.json").read_text())


@pytest.mark.real
def test_a_hook_served_by_uvicorn_answers_every_fixture_as_recorded() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/check_fixtures.py", "--serve"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout


@pytest.mark.real
def test_the_check_pins_the_hooks_clock_so_the_fixtures_do_not_age() -> None:
    # After the fixtures' certificates pass their renewal time the answers change: the pinned clock is what keeps
    # the check true in 2030 and after.
    result = subprocess.run(
        [sys.executable, "scripts/check_fixtures.py", "--serve", "--at", "2032-01-01T00:00:00+00:00"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAIL certificates-present" in result.stdout
    assert "ok   new-object" in result.stdout
