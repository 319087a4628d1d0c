"""Evaluation metrics against hand-computed numbers; the harness and `gpg-em eval` on scripted completions."""
import argparse
import json
import types

import numpy as np
import pytest

from gpg_em.eval import harness
from gpg_em.eval.metrics import (avg_at_k, cluster_answers, maj_at_k, majority_index, mean_maj_at_k,
                                 mean_pass_at_k, pass_at_k, pass_k_values)
from gpg_em.rewards import math_equal

same = lambda a, b: a == b  # noqa: E731 - plain string equality, for contrast with math-verify


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 2, 0.7),                 # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 1, 0.4),                 # pass@1 = c/n
    (4, 1, 2, 0.5),                 # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (10, 3, 5, 0.9166666666666666),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
    (3, 1, 2, 0.6666666666666667),  # 1 - C(2,2)/C(3,2) = 1 - 1/3
    (4, 3, 2, 1.0),                 # n - c < k: every pair holds a correct sample
    (5, 0, 3, 0.0),
    (5, 5, 5, 1.0),
    (200, 1, 100, 0.5),             # 1 - C(199,100)/C(200,100) = 1 - 100/200; binomials ~1e58
])
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_refuses_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mean_pass_and_avg_at_k():
    correct = np.array([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert mean_pass_at_k(correct, 2) == pytest.approx((0.7 + 0.0 + 1.0) / 3)
    assert mean_pass_at_k(correct, 1) == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    assert avg_at_k(np.array([[1, 0, 1, 1], [0, 1, 0, 1]])) == 0.625  # 5 of 8
    assert pass_k_values(8) == [1, 2, 4, 8] and pass_k_values(6) == [1, 2, 4, 6] and pass_k_values(1) == [1]


def test_majority_tie_goes_to_earliest_first_occurrence():
    # Two clusters of two: "3" first appears at 0, so it wins.
    assert majority_index(["3", "4", "4", "3"], same) == 0
    assert maj_at_k(["3", "4", "4", "3"], [1, 0, 0, 1], same) == 1.0
    # Mirror image: now "4" appears first and wins, and it is wrong.
    assert majority_index(["4", "3", "3", "4"], same) == 0
    assert maj_at_k(["4", "3", "3", "4"], [0, 1, 1, 0], same) == 0.0
    # A strict majority beats an earlier answer.
    assert majority_index(["1", "2", "2"], same) == 1
    # Abstentions (nothing extracted) do not vote: singletons tie, earliest voter wins.
    assert majority_index([None, "5", None, "6"], same) == 1
    assert majority_index([None, None], same) is None
    assert maj_at_k([None, None], [0, 0], same) == 0.0


def test_equivalent_forms_form_one_cluster():
    answers = [r"\frac{1}{2}", "0.5", "3", "1/2", "3"]
    assert cluster_answers(answers, math_equal) == [[0, 1, 3], [2, 4]]
    assert majority_index(answers, math_equal) == 0
    assert maj_at_k(answers, [1, 1, 0, 1, 0], math_equal) == 1.0
    # Compared as strings, "3" is the only repeated answer and would win.
    assert cluster_answers(answers, same) == [[0], [1], [2, 4], [3]]
    assert maj_at_k(answers, [1, 1, 0, 1, 0], same) == 0.0
    assert mean_maj_at_k([answers, ["7", "8"]], [[1, 1, 0, 1, 0], [0, 1]], math_equal) == 0.5


# ---------------------------------------------------------------- harness on scripted completions

SCRIPT = {  # question -> the completions the fake sampler returns, in order
    "Half of one?": [r"so \boxed{1/2}", r"\boxed{0.5}", r"\boxed{3}", "it is 3"],
    "Three plus four?": [r"\boxed{8}", r"\boxed{7}", "7.0", "no idea"],
    "Ten minus ten?": [r"\boxed{0}", r"\boxed{1}", r"\boxed{2}", r"\boxed{3}"],
}
GOLD = {"Half of one?": "0.5", "Three plus four?": "7", "Ten minus ten?": "0"}


def fake_generate(calls):
    def generate(model, prompts, *, max_new_tokens, num_samples, greedy, seed, **kw):
        calls.append({"prompts": list(prompts), "num_samples": num_samples, "greedy": greedy, "seed": seed})
        texts = [SCRIPT[p.split("\n\n")[0]][j] for p in prompts for j in range(num_samples)]
        B = len(texts)
        mask = np.zeros((B, max_new_tokens), np.int32)
        for i, t in enumerate(texts):
            mask[i, :min(len(t), max_new_tokens)] = 1
        return types.SimpleNamespace(texts=texts, mask=mask, entropies=np.full((B, max_new_tokens), 0.5, np.float32))
    return generate


def entries():
    return [{"question": q, "answer": GOLD[q], "metadata": {}, "source": "t", "index": i}
            for i, q in enumerate(SCRIPT)]


def test_harness_metrics_and_shared_generation(monkeypatch):
    from gpg_em.data import PromptFormatter
    calls = []
    monkeypatch.setattr(harness, "generate", fake_generate(calls))
    model = types.SimpleNamespace(tokenizer=None)
    res = harness.evaluate_modes(model, entries(), formatter=PromptFormatter(), modes=["greedy", "avg", "maj"],
                                 k=4, max_new_tokens=64, seed=3, rows_per_call=8)
    # greedy takes each problem's first completion: 1/2 right, 8 wrong, 0 right.
    assert res["greedy"]["metrics"] == {"pass@1": pytest.approx(2 / 3)}
    # correct: [1,1,0,0], [0,1,1,0], [1,0,0,0]
    m = res["avg"]["metrics"]
    assert m["avg@4"] == pytest.approx(5 / 12)
    assert m["pass@2"] == pytest.approx((5 / 6 + 5 / 6 + 0.5) / 3)  # 1 - C(2,2)/C(4,2); 1 - C(3,2)/C(4,2)
    assert m["pass@4"] == 1.0
    # votes: {1/2, 0.5} ties {3, 3} -> earliest, right; {7, 7.0} beats {8}, right; 4 singletons -> "0", right.
    assert m["maj@4"] == 1.0 and res["maj"]["score"] == 1.0 and res["avg"]["score"] == pytest.approx(5 / 12)
    assert [p["majority"] for p in res["maj"]["problems"]] == [0, 1, 0]
    assert res["maj"]["problems"][1]["answers"] == ["8", "7", "7.0", None]
    # avg and maj share one generation: 2 prompts per call (8 rows / 4), the last call padded to 2.
    sampled = [c for c in calls if not c["greedy"]]
    assert [len(c["prompts"]) for c in sampled] == [2, 2] and sampled[1]["prompts"][0] == sampled[1]["prompts"][1]
    assert [c["seed"] for c in sampled] == [3 * 1_000_003, 3 * 1_000_003 + 1]
    assert res["maj"]["shared_generation_with"] == "avg" and res["maj"]["tokens"] == res["avg"]["tokens"]
    assert res["avg"]["tokens"] == sum(min(len(t), 64) for ts in SCRIPT.values() for t in ts)
    assert res["avg"]["entropy_mean"] == pytest.approx(0.5)
    assert len(res["avg"]["chunk_seconds"]) == 2 and res["avg"]["tokens_per_second_warm"] > 0


def test_eval_cli_on_a_jsonl_benchmark(monkeypatch, tmp_path, capsys):
    from gpg_em.eval import cli, policy
    data = tmp_path / "bench.jsonl"
    data.write_text("".join(json.dumps({"problem": q, "solution": f"\\boxed{{{GOLD[q]}}}"}) + "\n" for q in SCRIPT))
    monkeypatch.setattr(harness, "generate", fake_generate([]))
    monkeypatch.setattr(policy, "load_model", lambda spec, dtype, step: (
        types.SimpleNamespace(tokenizer=None), {"kind": "pretrained", "spec": spec}))
    p = argparse.ArgumentParser()
    cli.add_eval_parser(p.add_subparsers(dest="command"))
    out = tmp_path / "res.json"
    args = p.parse_args(["eval", "--model", "fake", "--data", str(data), "--mode", "greedy,maj,em_inf",
                         "-k", "4", "--em-inf-delta", "0.2", "--out", str(out), "--instruction", ""])
    cli.run_eval(args)
    saved = json.loads(out.read_text())
    assert saved["results"]["maj"]["score"] == 1.0 and saved["results"]["greedy"]["score"] == pytest.approx(2 / 3)
    assert saved["results"]["em_inf"]["decoding"]["em_inf"]["delta"] == 0.2
    assert saved["results"]["em_inf"]["decoding"]["em_inf"]["n_steps"] == 5  # the paper's default kept
    printed = capsys.readouterr().out
    assert "maj@4" in printed and "em_inf" in printed
    assert cli.modes_of(p.parse_args(["eval", "--model", "m", "--mode", "greedy", "--adaptive-temperature"])) == [
        "greedy", "adaptive"]
    with pytest.raises(SystemExit, match="beam"):
        cli.run_eval(p.parse_args(["eval", "--model", "fake", "--data", str(data), "--mode", "beam"]))
