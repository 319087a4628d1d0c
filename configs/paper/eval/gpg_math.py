"""The GPG paper's evaluation: lighteval on MATH-500 / AIME24 / AMC23 / Minerva / OlympiadBench.

Source: AMAP-ML/GPG `open-rs/eval.sh` (generation_parameters temperature 0.6, top_p 0.95,
max_new_tokens 32768; tasks aime24 math_500 amc23 minerva olympiadbench) and
`open-rs/src/open_r1/evaluate.py` (one sample per problem, math-verify on \\boxed{}; the query
template asks for `Therefore, the final answer is: $\\boxed{ANSWER}$`). One sample is avg@1 here;
raise num_samples (-k) for avg@k.

    gpg-em eval --preset configs/paper/eval/gpg_math.py --model /ckpt/policy --data /data/math500.jsonl
"""

INSTRUCTION = ("Solve the following math problem efficiently and clearly.  The last line of your response should "
               "be of the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is "
               "correct' (without quotes) where ANSWER is just the final number or expression that solves the "
               "problem. Think step by step before answering.")


def get_config():
    return dict(mode="avg", num_samples=1, temperature=0.6, top_p=0.95, max_new_tokens=32768, num_prompts=0,
                reward="math", instruction=INSTRUCTION)
