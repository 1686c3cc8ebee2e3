"""The linters CI holds the code to, clean: ruff (lint and format) and mypy.

Each runs from the test's own environment (the dev extra installs them). A missing tool
skips its test with the reason, except where ``ASYNCSYNTH_REQUIRE_LINT=1`` (CI): there it
fails (``REAL_COMPONENTS`` in conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(
    "tool, args",
    [
        pytest.param("ruff", ["check", "."], marks=pytest.mark.lint("ruff"), id="ruff-check"),
        pytest.param(
            "ruff", ["format", "--check", "."], marks=pytest.mark.lint("ruff"), id="ruff-format"
        ),
        # what mypy checks, and how strictly, is in pyproject.toml's [tool.mypy]
        pytest.param("mypy", [], marks=pytest.mark.lint("mypy"), id="mypy"),
    ],
)
def test_clean(tool: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{tool} {' '.join(args)}:\n{done.stdout}{done.stderr}"
