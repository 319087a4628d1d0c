"""EM-INF as released: entropy minimisation of each step's logits, then sampling at temperature 0.1.

Source: shivamag125/EM_PT `evaluation_scripts/em_inf_eval.sh`: threshold 0.3, kl_weight 0.05,
learning_rate 0.1, n_grad_steps 3, TEMP 0.1 (the project's EMInfConfig defaults are the code's
lr 0.1, 5 steps, kl_weight 0.001, delta 0.3).
"""


def get_config():
    return dict(mode="em_inf", num_samples=1, temperature=0.1, top_p=1.0, max_new_tokens=4096, num_prompts=0,
                reward="math", em_inf_delta=0.3, em_inf_kl_weight=0.05, em_inf_lr=0.1, em_inf_steps=3)
