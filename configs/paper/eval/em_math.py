"""The EM paper's math evaluation as its released scripts run it (normal mode).

Source: shivamag125/EM_PT `evaluation_scripts/normal_eval.sh` (TEMP=0.1) and `eval/run.sh`
(Qwen2.5-Math `math_eval.py` with --n_sampling 1 --top_p 1 for Minerva / OlympiadBench). One
sample at temperature 0.1 (nearly greedy; add `--mode greedy` for exactly greedy). The maximum
length is Qwen2.5-Math's evaluation default of 4096 new tokens as we read it; check it.
"""


def get_config():
    return dict(mode="avg", num_samples=1, temperature=0.1, top_p=1.0, max_new_tokens=4096, num_prompts=0,
                reward="math")
