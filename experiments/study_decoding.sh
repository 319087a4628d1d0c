#!/usr/bin/env bash
# Decoding-only rows of the reproduction study (the base model, no training): greedy pass@1,
# avg@4 / pass@4 / maj@4 (self-consistency) at temperature 1, EM-INF and adaptive temperature,
# each with the tokens generated and wall time, on the study's 32 held-out chain_sum problems.
#
#     bash experiments/study_decoding.sh            # writes experiments/results/study/decoding.json
set -euo pipefail
out=${1:-experiments/results/study/decoding.json}
mkdir -p "$(dirname "$out")"
gpg-em eval --model smollm2-135m-instruct --task chain_sum \
  --task-options '{"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}' \
  --num-prompts 32 --max-new-tokens 64 --mode greedy,avg,maj,em_inf,adaptive -k 4 --out "$out"
