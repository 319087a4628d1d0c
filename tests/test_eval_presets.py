"""`gpg-em eval` on the published benchmark layouts (small fixture files) and `--preset` files."""
import glob
import json
import os

import pytest

from gpg_em.eval.cli import default_args, load_problems
from gpg_em.eval.presets import apply_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One record per benchmark in the layout its public copy has (field names as lighteval's open-rs tasks read them).
LAYOUTS = {
    "math500": ({"problem": "What is $1+1$?", "solution": "Add: $\\boxed{2}$.", "answer": "2", "level": 1}, "2"),
    "aime24": ({"id": 60, "problem": "Find $x$.", "solution": "long", "answer": "204"}, "204"),
    "amc23": ({"id": 0, "problem": "How many?", "answer": 27.0, "url": "u"}, "27"),
    "minerva": ({"problem": "Mass?", "solution": "So it is $\\boxed{7.5e5}$."}, "7.5e5"),
    "olympiadbench": ({"id": 1, "question": "Value?", "final_answer": ["$\\frac{1}{2}$"]}, "$\\frac{1}{2}$"),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_benchmark_layouts_load(name, tmp_path):
    record, gold = LAYOUTS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    args = default_args()
    args.data, args.num_prompts = str(path), 0
    if name == "olympiadbench":
        args.answer_field = "final_answer"
    entries, spec = load_problems(args)
    assert len(entries) == 2 and spec["path"] == str(path)
    assert entries[0]["answer"] == gold and entries[0]["question"] == record.get("problem", record.get("question"))


def test_list_answer_must_hold_strings(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": [1, 2]}) + "\n")
    args = default_args()
    args.data = str(path)
    with pytest.raises(ValueError, match="bad.jsonl:1: field 'answer' is a list but not a non-empty list of strings"):
        load_problems(args)


def test_preset_sets_defaults_and_flags_win(tmp_path):
    args = default_args()
    args.preset = os.path.join(ROOT, "configs", "paper", "eval", "em_inf.py")
    args.temperature = 0.7  # given on the command line
    apply_preset(args, default_args())
    assert (args.em_inf_kl_weight, args.em_inf_steps, args.em_inf_delta, args.em_inf_lr) == (0.05, 3, 0.3, 0.1)
    assert args.mode == "em_inf" and args.temperature == 0.7


def test_preset_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {'temprature': 0.6}\n")
    args = default_args()
    args.preset = str(bad)
    with pytest.raises(SystemExit, match="key 'temprature' is not an eval option"):
        apply_preset(args, default_args())


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "paper", "eval", "[!_]*.py"))))
def test_every_eval_preset_applies(path):
    args = default_args()
    args.preset = path
    apply_preset(args, default_args())
    text = open(path, encoding="utf-8").read()
    assert "Source:" in text and args.reward == "math" and args.max_new_tokens >= 4096
    if args.mode == "adaptive":
        from gpg_em.decoding_args import adaptive_config
        assert adaptive_config(args).alpha == 0.85 and adaptive_config(args).tau_min == 0.01


def test_eval_with_a_preset_end_to_end(monkeypatch, tmp_path):
    """`gpg-em eval --preset em_inf.py` on a MATH-500-layout file: the released EM-INF settings reach the
    decoder and the results (the model's generate is a scripted fake, as in test_eval_metrics)."""
    import argparse
    import types
    from test_eval_metrics import GOLD, SCRIPT, fake_generate
    from gpg_em.eval import cli, harness, policy
    data = tmp_path / "math500.jsonl"
    data.write_text("".join(json.dumps({"problem": q, "solution": f"\\boxed{{{GOLD[q]}}}", "answer": GOLD[q]}) + "\n"
                            for q in SCRIPT))
    calls, seen = [], []
    scripted = fake_generate(calls)

    def generate(model, prompts, **kw):  # records what the preset set, then answers from the script
        seen.append((kw["max_new_tokens"], kw["temperature"], kw["top_p"]))
        return scripted(model, prompts, **kw)
    monkeypatch.setattr(harness, "generate", generate)
    monkeypatch.setattr(policy, "load_model", lambda spec, dtype, step: (
        types.SimpleNamespace(tokenizer=None), {"kind": "pretrained", "spec": spec}))
    p = argparse.ArgumentParser()
    cli.add_eval_parser(p.add_subparsers(dest="command"))
    out = tmp_path / "res.json"
    cli.run_eval(p.parse_args(["eval", "--preset", os.path.join(ROOT, "configs", "paper", "eval", "em_inf.py"),
                               "--model", "fake", "--data", str(data), "--out", str(out), "--instruction", ""]))
    saved = json.loads(out.read_text())
    em = saved["results"]["em_inf"]["decoding"]["em_inf"]
    assert (em["kl_weight"], em["n_steps"], em["delta"], em["lr"]) == (0.05, 3, 0.3, 0.1)
    assert list(saved["results"]) == ["em_inf"] and saved["problems"]["path"] == str(data)
    assert calls and all(c["greedy"] is False for c in calls) and set(seen) == {(4096, 0.1, 1.0)}
