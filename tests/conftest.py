"""Shared fixtures; helpers live in testsupport.py (importable because pyproject puts tests/ on pythonpath)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from testsupport import pydicom_file


@pytest.fixture
def testdata() -> Callable[[str], Path]:
    return pydicom_file


@pytest.fixture
def rg1() -> Dataset:
    """The real CR chest PA (MONOCHROME1, 15-bit, windowed) from pydicom-data."""
    return dcmread(pydicom_file("RG1_UNCR.dcm"))


@pytest.fixture(autouse=True)
def _radlvlm_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """radlvlm's state folder (default project key, audit trail) in a temporary folder: no test writes to the
    home of whoever runs the suite, and no test sees another's key."""
    home = tmp_path_factory.mktemp("radlvlm-home")
    monkeypatch.setenv("RADLVLM_HOME", str(home))
    return home
