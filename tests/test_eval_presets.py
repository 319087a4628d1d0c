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
