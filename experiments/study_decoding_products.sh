#!/usr/bin/env bash
# Decoding rows of the study on its second task, reasoning-gym products (2 factors of 1-2 digits):
# the base model's greedy pass@1, avg@4 / maj@4 at T=1, EM-INF and adaptive temperature, 32 held-out problems.
#
#     bash experiments/study_decoding_products.sh      # writes experiments/results/study_products/decoding.json
set -euo pipefail
out=${1:-experiments/results/study_products/decoding.json}
mkdir -p "$(dirname "$out")"
gpg-em eval --model smollm2-135m-instruct --task products \
  --task-options '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}' \
  --num-prompts 32 --max-new-tokens 64 --mode greedy,avg,maj,em_inf,adaptive -k 4 --out "$out"
