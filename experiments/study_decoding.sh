#!/usr/bin/env bash
# Decoding rows of the study: the base model's greedy pass@1, avg@4 / maj@4 at T=1, EM-INF and
# adaptive temperature, on 32 held-out problems of a reasoning-gym task.
#
#     bash experiments/study_decoding.sh        # chain_sum (2-3 terms, 1-2 digits) -> experiments/results/study/decoding.json
#     bash experiments/study_decoding.sh products '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}' \
#         experiments/results/study_products/decoding.json
set -euo pipefail
task=${1:-chain_sum}
options=${2:-'{"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}'}
out=${3:-experiments/results/study/decoding.json}
mkdir -p "$(dirname "$out")"
gpg-em eval --model smollm2-135m-instruct --task "$task" --task-options "$options" \
  --num-prompts 32 --max-new-tokens 64 --mode greedy,avg,maj,em_inf,adaptive -k 4 --out "$out"
