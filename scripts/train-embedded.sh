#!/usr/bin/env bash
# The embedded default model end to end, from the public data to the package: about 2 hours on 2 CPU cores,
# resumable (rerun the same command after an interruption; finished steps are skipped).
#
#   scripts/train-embedded.sh DATA WORK [SHIP_TO]
#
# DATA: a folder with iu_xray/, nih_cxr14/, covid_chestxray/ (see README "Training"); WORK: working folder;
# SHIP_TO (default radlvlm/model/weights/default): where the float16 weights and the model card are installed.
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: scripts/train-embedded.sh DATA WORK [SHIP_TO]" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="$(cd "$1" && pwd)"
mkdir -p "$2"
work="$(cd "$2" && pwd)"
ship_to="$(realpath -m "${3:-$repo/radlvlm/model/weights/default}")"
python="${PYTHON:-$repo/.venv/bin/python}"

# 1-8: tokenizer, LM, vision encoder, assembly, stage 1, stage 2, the calibration of its SIMPLE checks,
# validation against the baselines, and the plain-LoRA stage 2 with its validation (the MoLE-vs-LoRA comparison).
# EMBEDDED_ARGS may add e.g. "--lm-from radlvlm/model/weights/default/base" (reuse a shipped LM: steps 1-2).
# shellcheck disable=SC2086  # EMBEDDED_ARGS is a list of options
"$python" -m radlvlm embedded build --data "$data" --work "$work" --scale default --seed 0 --compare-lora ${EMBEDDED_ARGS:-}
# 8: DPO safety alignment on top of stage 2 (the recipe's paths are relative to the working folder).
cd "$work"
ln -sfn "$data" data
"$python" -m radlvlm train "$repo/recipes/dpo-embedded.yaml"
# 9: before/after figures of the alignment on the validation split.
if [[ ! -f dpo/eval/metrics.json ]]; then
    "$python" -m radlvlm embedded dpo-eval "$repo/recipes/dpo-embedded.yaml" --out dpo/eval
fi
# 10: the DPO model's SIMPLE-check calibration, then its own validation figures next to the baselines (the card
# reports the model it ships).
if [[ ! -f dpo/run/adapter/check_calibration.json ]]; then
    "$python" -m radlvlm embedded calibrate --data "$data" --model dpo/run/base --adapter dpo/run/adapter
fi
if [[ ! -f eval_dpo/summary.json ]]; then
    "$python" -m radlvlm embedded evaluate --data "$data" --model dpo/run/base --adapter dpo/run/adapter \
        --out eval_dpo --name embedded-dpo
fi
# 11: install the better of stage 2 and DPO into the package, with its model card.
"$python" -m radlvlm embedded ship --work "$work" --to "$ship_to"
# 12: measure it as users meet it (the HTTP API: error checks on both injectors, the blatant suite and NIH
# image checks; drafts of the NIH test images), then install again with those figures on the card.
if [[ "$ship_to" == "$repo/radlvlm/model/weights/default" ]]; then
    cd "$repo"
    "$python" benchmarks/errorcheck_study.py --data "$data"
    "$python" benchmarks/draft_study.py --data "$data"
    "$python" -m radlvlm embedded ship --work "$work" --to "$ship_to" --results benchmarks/results
fi
