"""The documentation site: it builds with warnings as errors (a broken link or reference fails), and the commands
on its getting-started page are the README's and run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from radlvlm.settings import Settings

REPO = Path(__file__).resolve().parents[1]
GETTING_STARTED = REPO / "docs" / "getting-started.md"


def _bash_blocks(path: Path) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)\n```", path.read_text(), flags=re.S)]


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html", str(REPO / "docs"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configuration = (tmp_path / "configuration.html").read_text()
    for name in Settings.model_fields:  # generated from the settings class: every setting is on the page
        assert f"RADLVLM_{name.upper()}" in configuration
    api = (tmp_path / "http-api.html").read_text()
    assert "/v1/drafts" in api and "/v1/checks" in api and "error_probability" in api


def test_the_getting_started_page_holds_the_readme_set_up_commands() -> None:
    readme = _bash_blocks(REPO / "README.md")
    page = _bash_blocks(GETTING_STARTED)
    serve = next(block for block in readme if "radlvlm serve" in block)
    tests = next(block for block in readme if "pytest" in block)
    assert serve in page and tests in page
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_pieces_of_the_set_up_commands_exist() -> None:
    """What the two commands name: the constraints file, the extras, the scripts, the setting and the verb."""
    serve = next(block for block in _bash_blocks(GETTING_STARTED) if "radlvlm serve" in block)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "samples" in extras and "dev" in extras and (REPO / "constraints.txt").is_file()
    for script in ("scripts/setup-system.sh", "scripts/lint-imports.sh", "scripts/in-private-netns.sh"):
        assert os.access(REPO / script, os.X_OK), script
    variables = re.findall(r"RADLVLM_([A-Z_]+)=", serve)
    assert variables and all(name.lower() in Settings.model_fields for name in variables)
    help_text = subprocess.run(
        [sys.executable, "-m", "radlvlm", "serve", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert help_text.returncode == 0 and "--port" in help_text.stdout


def test_the_draft_command_on_the_page_drafts_the_sample_study() -> None:
    pytest.importorskip("pydicom.data", reason="the sample study comes with pydicom-data (the samples extra)")
    command = next(block for block in _bash_blocks(GETTING_STARTED) if "radlvlm draft" in block)
    # The page's .venv/bin/ is this interpreter's environment here, wherever it lives.
    command = command.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    result = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    draft = json.loads(result.stdout)
    assert draft["findings"] and draft["image"]["view"] == "PA"
