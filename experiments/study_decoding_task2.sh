#!/usr/bin/env bash
# Decoding rows of the study on a second task, reasoning-gym basic_arithmetic (default options):
# the base model's greedy pass@1, avg@4 / maj@4 at T=1, EM-INF and adaptive temperature, 32 held-out problems.
#
#     bash experiments/study_decoding_task2.sh      # writes experiments/results/study/decoding_basic_arithmetic.json
set -euo pipefail
out=${1:-experiments/results/study/decoding_basic_arithmetic.json}
mkdir -p "$(dirname "$out")"
gpg-em eval --model smollm2-135m-instruct --task basic_arithmetic \
  --num-prompts 32 --max-new-tokens 64 --mode greedy,avg,maj,em_inf,adaptive -k 4 --out "$out"
