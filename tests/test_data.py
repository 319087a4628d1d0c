"""Data: sources, formatter, resumable iterator, TFDS round trip."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from gpg_em.data import (PromptFormatter, PromptIterator, ReasoningGymSource, gold_from_text,
                         load_jsonl, load_parquet, make_source)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


GSM8K = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A farm has 1,000 hens...", "answer": "so 600 + 400\n#### 1,000"},
]
MATH = [
    {"problem": "Compute 1/2.", "solution": r"It is $\boxed{\frac{1}{2}}$.", "level": "Level 1"},
    {"problem": "Solve.", "solution": r"So \boxed{3} \text{ and } \boxed{x^{2}}", "answer": "x^2"},
]


def test_jsonl_gsm8k_layout(tmp_path):
    entries = load_jsonl(write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K))
    assert [e["answer"] for e in entries] == ["7", "1000"]
    assert entries[1] == {"question": GSM8K[1]["question"], "answer": "1000",
                          "metadata": {"answer": GSM8K[1]["answer"]}, "source": "gsm8k.jsonl",
                          "index": 1}


def test_jsonl_math_layout(tmp_path):
    entries = load_jsonl(write_jsonl(tmp_path / "math.jsonl", MATH))
    # No "answer" field: last \boxed{} of the solution; explicit "answer" wins.
    assert [e["question"] for e in entries] == ["Compute 1/2.", "Solve."]
    assert [e["answer"] for e in entries] == [r"\frac{1}{2}", "x^2"]
    assert entries[0]["metadata"]["level"] == "Level 1"
    forced = load_jsonl(str(tmp_path / "math.jsonl"), answer_field="solution")
    assert forced[1]["answer"] == "x^{2}"


def test_custom_field_names_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"q": "1+1?", "gold": "2"}])
    assert load_jsonl(path, question_field="q", answer_field="gold")[0]["answer"] == "2"
    assert gold_from_text("x #### 5", "raw") == "x #### 5"
    assert gold_from_text(r"\boxed{4}", "gsm8k") is None
    with pytest.raises(ValueError, match=r"c\.jsonl:1: field 'gold' has no '#### answer' marker"):
        load_jsonl(path, question_field="q", answer_field="gold", answer_format="gsm8k")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "math.parquet")
    pq.write_table(pa.Table.from_pylist([{"problem": "p0", "solution": r"\boxed{5}"},
                                         {"problem": "p1", "solution": r"\boxed{\frac{2}{3}}"}]), path)
    entries = load_parquet(path)
    assert [(e["question"], e["answer"], e["index"]) for e in entries] == [
        ("p0", "5", 0), ("p1", r"\frac{2}{3}", 1)]
    assert make_source({"path": path})[1]["answer"] == r"\frac{2}{3}"
    with pytest.raises(ValueError, match=r"math\.parquet: row 0: missing field 'q'"):
        load_parquet(path, question_field="q")


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GSM8K[0]) + "\n\n" + '{"question": "x", "answer": \n')
    with pytest.raises(ValueError, match=rf"{path}:3: malformed JSON line"):
        load_jsonl(str(path))
    path.write_text('["not", "an", "object"]\n')
    with pytest.raises(ValueError, match=rf"{path}:1: expected a JSON object"):
        load_jsonl(str(path))


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [GSM8K[0], {"question": "no answer"}])
    with pytest.raises(ValueError, match=r"m\.jsonl:2: missing field 'answer'.*'answer_field'"):
        load_jsonl(path)
    with pytest.raises(ValueError, match=r"m\.jsonl:1: missing field 'text'.*'question_field'"):
        load_jsonl(path, question_field="text")


def test_reasoning_gym_source_deterministic():
    a, b = ReasoningGymSource("chain_sum", {"min_terms": 2, "max_terms": 3}, seed=7, size=5), \
        ReasoningGymSource("chain_sum", {"min_terms": 2, "max_terms": 3}, seed=7, size=5)
    assert len(a) == 5 and a[4]["question"] == b[4]["question"]
    e = a[2]
    assert e["source"] == "reasoning_gym/chain_sum" and e["index"] == 2
    assert e["metadata"]["rg_entry"]["answer"] == e["answer"]
    assert make_source({"kind": "reasoning_gym", "task": "chain_sum", "seed": 7, "size": 5,
                        "options": {"min_terms": 2, "max_terms": 3}})[2] == e


def test_unknown_task_and_bad_config():
    with pytest.raises(ValueError, match=r"unknown reasoning-gym task 'chain_sun'.*chain_sum.*"
                                         r"reasoning_gym\.factory\.DATASETS"):
        ReasoningGymSource("chain_sun")
    with pytest.raises(ValueError, match=r"bad options"):
        ReasoningGymSource("chain_sum", {"no_such_option": 1})
    with pytest.raises(ValueError, match=r"'kind'='csv'"):
        make_source({"kind": "csv"})
    with pytest.raises(ValueError, match=r"kind='jsonl'\): unknown keys \['pth'\]; expected keys"):
        make_source({"kind": "jsonl", "pth": "x"})
    with pytest.raises(ValueError, match=r"missing keys \['task'\]"):
        make_source({"kind": "reasoning_gym"})


def test_formatter():
    e = {"question": "What is 2+2?  "}
    assert PromptFormatter().messages(e) == [
        {"role": "user", "content": "What is 2+2?\n\nPut your final answer within \\boxed{}."}]
    fmt = PromptFormatter(system_prompt="Be brief.", instruction="")
    assert fmt.messages(e) == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "What is 2+2?"}]
    assert fmt.text(e) == "Be brief.\n\nWhat is 2+2?\n\n"


def test_length_fn_uses_chat_template():
    from gpg_em.data import make_length_fn

    class FakeTokenizer:  # the two methods make_length_fn relies on
        chat_template = "x"

        def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "<s>" + " ".join(m["content"] for m in msgs) + " <assistant>"

        def __call__(self, text, add_special_tokens):
            assert not add_special_tokens
            return {"input_ids": text.split()}

    length = make_length_fn(FakeTokenizer(), PromptFormatter(instruction="Think."))
    assert length({"question": "a b c"}) == 5  # "<s>a", "b", "c", "Think.", "<assistant>"


def toy_source(n):
    return [{"question": "q" * (i + 1), "answer": str(i), "metadata": {}, "source": "toy",
             "index": i} for i in range(n)]


def indices(batches):
    return [[e["index"] for e in b] for b in batches]


def take(it, k):
    return indices(next(it) for _ in range(k))


def test_iterator_deterministic_and_epochs():
    src = toy_source(10)
    first = take(PromptIterator(src, 4, seed=1), 5)
    assert first == take(PromptIterator(src, 4, seed=1), 5)
    assert first != take(PromptIterator(src, 4, seed=2), 5)
    flat = [i for b in first for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # reshuffled per epoch
    assert take(PromptIterator(src, 4, shuffle=False), 1) == [[0, 1, 2, 3]]
    finite = PromptIterator(src, 4, num_epochs=1)
    assert [len(b) for b in finite] == [4, 4, 2]


def test_iterator_resume_gives_identical_batches():
    src = toy_source(7)
    length = lambda e: len(e["question"])  # noqa: E731
    ref = PromptIterator(src, 3, seed=5, length_fn=length, max_prompt_tokens=5)
    take(ref, 4)
    state = json.loads(json.dumps(ref.state()))  # checkpoints hold it as JSON
    expected = take(ref, 6)
    resumed = PromptIterator(src, 3, seed=5, length_fn=length, max_prompt_tokens=5)
    resumed.restore(state)
    assert take(resumed, 6) == expected
    assert resumed.state() == ref.state()
    with pytest.raises(ValueError, match="seed=5 but this iterator has seed=6"):
        PromptIterator(src, 3, seed=6).restore(state)


def test_length_filter_drops_and_counts():
    src = toy_source(10)  # question i has i + 1 tokens under this length_fn
    length = lambda e: len(e["question"])  # noqa: E731
    it = PromptIterator(src, 4, seed=0, length_fn=length, max_prompt_tokens=6)
    assert all(i < 6 for b in take(it, 6) for i in b)
    assert it.metrics()["data/n_too_long"] == 4
    # In order: each epoch keeps 0..5 then skips 6..9. 6 batches of 4 are 4
    # epochs of kept prompts, ending before epoch 3's skips.
    ordered = PromptIterator(src, 4, shuffle=False, length_fn=length, max_prompt_tokens=6)
    take(ordered, 6)
    assert ordered.n_dropped == 12 and ordered.state()["epoch"] == 3
    assert take(ordered, 1) == [[0, 1, 2, 3]] and ordered.n_dropped == 16
    with pytest.raises(ValueError, match="all 10 prompts exceed max_prompt_tokens=0"):
        next(PromptIterator(src, 2, length_fn=lambda e: 1, max_prompt_tokens=0))


def test_tfds_round_trip(tmp_path):
    from gpg_em.data import TfdsSource, prepare_tfds
    from gpg_em.rewards import make_reasoning_gym_reward
    jsonl = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    rg_cfg = {"kind": "reasoning_gym", "task": "chain_sum", "seed": 3, "size": 6}
    cfg = {"splits": {"train": rg_cfg, "test": {"kind": "jsonl", "path": jsonl}}}
    builder = prepare_tfds(cfg, str(tmp_path / "tfds"))
    test = builder.as_data_source("test")
    assert len(test) == 2 and test[1]["answer"] == b"1000"
    assert list(TfdsSource(builder, "test")) == load_jsonl(jsonl)
    train, original = TfdsSource(builder, "train"), ReasoningGymSource("chain_sum", seed=3, size=6)
    for got, want in zip(train, original):
        want["metadata"].pop("rg_entry")
        assert got == want
    # Scoring works on entries read back (rg_entry is regenerated).
    e = train[4]
    assert make_reasoning_gym_reward()([""], [e["answer"]], [e]) == [1.0]
    again = make_source({"kind": "tfds", "data_dir": str(tmp_path / "tfds"), "source": cfg,
                         "split": "test"})
    assert again[0]["answer"] == "7"
    reopened = make_source({"kind": "tfds", "builder_dir": builder.data_dir, "split": "test"})
    assert reopened[1]["answer"] == "1000"
    # An edited file is prepared again, not served stale.
    write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K[:1])
    os.utime(jsonl, ns=(0, 10**18))
    assert len(prepare_tfds(cfg, str(tmp_path / "tfds")).as_data_source("test")) == 1


def test_tfds_works_without_tensorflow(tmp_path):
    # Run in a fresh interpreter where importing tensorflow fails even if it
    # happens to be installed.
    jsonl = write_jsonl(tmp_path / "g.jsonl", GSM8K)
    code = textwrap.dedent(f"""
        import importlib.machinery, sys

        class NoTensorFlow:  # the path finder, minus tensorflow: as if not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tensorflow":
                    return None
                return importlib.machinery.PathFinder.find_spec(name, path, target)

            def invalidate_caches(self):
                importlib.machinery.PathFinder.invalidate_caches()

        sys.meta_path[:] = [NoTensorFlow() if f is importlib.machinery.PathFinder else f
                            for f in sys.meta_path]
        try:
            import tensorflow
            raise SystemExit("tensorflow still importable")
        except ModuleNotFoundError:
            pass
        from gpg_em.data import TfdsSource, prepare_tfds
        b = prepare_tfds({{"kind": "jsonl", "path": {jsonl!r}}}, {str(tmp_path / "d")!r})
        assert [e["answer"] for e in TfdsSource(b, "train")] == ["7", "1000"]
        assert b.as_data_source("train")[0]["question"].startswith(b"Tom")
        assert "tensorflow" not in sys.modules
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
