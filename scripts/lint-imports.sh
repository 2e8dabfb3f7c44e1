#!/usr/bin/env bash
# ARCHITECTURE.md's layers, checked by import-linter over radlvlm as it is installed.
#
# import-linter (grimp) finds a package's modules by walking its folder, and setuptools' package-dir mapping
# (training/ -> radlvlm.training, ...) is invisible to a walk of radlvlm/; so the check runs on a copy laid out
# as a wheel installs it, found first on PYTHONPATH. The contract itself is in pyproject.toml.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
cp -r "$repo/radlvlm" "$tree/radlvlm"
for folder in training safety clinical_eval integrations; do
    cp -r "$repo/$folder" "$tree/radlvlm/$folder"
done
cd "$tree"
PYTHONPATH="$tree" "${LINT_IMPORTS:-$repo/.venv/bin/lint-imports}" "$repo/pyproject.toml" --no-cache "$@"
