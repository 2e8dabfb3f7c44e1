#!/usr/bin/env bash
# The embedded model's finding classifier and findings-driven writer (issue 33), continued from an installed model,
# resumable (rerun the same command after an interruption; finished steps are skipped).
#
#   scripts/train-findings.sh DATA WORK [MODEL]
#
# DATA: a folder with iu_xray/, nih_cxr14/, covid_chestxray/; WORK: working folder; MODEL (default the embedded
# model, radlvlm/model/weights/default): the model the writer continues, replaced by the result.
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: scripts/train-findings.sh DATA WORK [MODEL]" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="$(cd "$1" && pwd)"
mkdir -p "$2"
work="$(cd "$2" && pwd)"
model="$(realpath -m "${3:-$repo/radlvlm/model/weights/default}")"
python="${PYTHON:-$repo/.venv/bin/python}"
radlvlm=("$python" -m radlvlm)
step() { local name="$1"; shift; local start; start=$(date +%s); "$@"; echo "$name $(( $(date +%s) - start )) s" >> "$work/seconds.txt"; }

# 1: the classifier: 3 patient-grouped folds over train, out-of-fold calibration and thresholds, the ensemble.
step classifier "${radlvlm[@]}" embedded findings --data "$data" --work "$work/findings"
# 2: the classifier becomes the model's vision tower: its feature map, pooled to 3 x 3, reaches the language model as
# 9 visual tokens through a new projector (the language model and its experts are kept).
if [[ ! -f "$work/tower/tower.json" ]]; then
    step tower "${radlvlm[@]}" embedded tower --model "$model" --classifier "$work/findings/classifier" --to "$work/tower"
fi
# 3: the writer: the experts and the new projector trained on findings-driven drafts (IU train reports, train
# radiographs with out-of-fold findings) and text-only checks.
step writer "${radlvlm[@]}" embedded writer --data "$data" --classifier "$work/findings" --model "$work/tower" --work "$work/writer" --steps 3000
# 4: the SIMPLE text check's calibration on validation data (model + rules), next to the writer's adapter.
if [[ ! -f "$work/writer/run/adapter/check_calibration.json" ]]; then
    step calibrate "${radlvlm[@]}" embedded calibrate --data "$data" --model "$work/writer/run/base" --adapter "$work/writer/run/adapter"
fi
# 5: install writer and classifier (float16) as MODEL, then fit the image check's fusion out of fold over train
# with that model's text check, beside the installed classifier.
step install "${radlvlm[@]}" embedded install --writer "$work/writer" --classifier "$work/findings" --to "$model"
step image-check "${radlvlm[@]}" embedded image-check --data "$data" --classifier "$work/findings" --model "$model"
