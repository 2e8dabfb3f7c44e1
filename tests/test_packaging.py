"""The distribution's layout and the README/CI contract."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_and_mapped_into_the_namespace() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    listed = set(setuptools["packages"])
    found = set()
    for name, folder in mapping.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root)
            dotted = ".".join([name, *relative.parts]) if relative.parts else name
            if not any(dotted.startswith(other + ".") and other != name for other in mapping):
                found.add(dotted)
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    for name in listed:
        assert importlib.import_module(name).__name__ == name


def test_card_folders_import_under_radlvlm_not_top_level() -> None:
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping["radlvlm.safety"] == "safety" and mapping["radlvlm.training"] == "training"
    assert mapping["radlvlm.clinical_eval"] == "clinical_eval" and mapping["radlvlm.integrations"] == "integrations"
    module = importlib.import_module("radlvlm.safety")
    assert Path(module.__file__).parent == REPO / "safety"  # type: ignore[arg-type]


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command.strip() in ci.splitlines()


def test_torch_is_pinned_to_the_cpu_wheel_by_the_constraints_file() -> None:
    constraints = (REPO / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S):
        for line in block.splitlines():
            if "pip install" not in line:
                continue
            if '".[vllm]"' in line:  # vLLM pins its own CUDA torch: a separate environment, never the CPU pin
                assert "-c constraints.txt" not in line and ".venv-vllm/bin/pip" in line
            else:
                assert "-c constraints.txt" in line
    extras = _pyproject()["project"]["optional-dependencies"]
    assert not any("vllm" in requirement for requirement in extras["dev"])  # the CPU test environment never has it
    dependencies = " ".join(_pyproject()["project"]["dependencies"])
    for heavy in ("transformers[vision]", "monai[all]", "trl[vlm]", "torchvision"):
        assert heavy not in dependencies
