"""Adaptive temperature (the EM paper's baseline) as released.

Source: shivamag125/EM_PT `evaluation_scripts/adaptive_temp_eval.sh`: target_ratio 0.85,
tmin 0.01, tmax 1, threshold 1e-5, tol 0.1, max_iter 100 (and --temp 0.1), with the search in
`eval/utils/em_inf_utils.py`: bisection on tau in [tmin, tmax] towards the entropy
max(threshold, ratio * H), stopping once within tol of it. Here: alpha 0.85, delta 1e-5,
tau_min 0.01, and the largest tau meeting the target found by 20 bisection steps (no tolerance
stop: the target is met exactly rather than to +-0.1 nats); sampling at the script's --temp 0.1.
"""


def get_config():
    return dict(mode="adaptive", num_samples=1, temperature=0.1, top_p=1.0, max_new_tokens=4096, num_prompts=0,
                reward="math", adaptive_alpha=0.85, adaptive_delta=1e-5, adaptive_tau_min=0.01, adaptive_iters=20)
