"""Rewards: extraction, math-verify, format, reasoning-gym, registry, safety."""
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from gpg_em import rewards
from gpg_em.rewards import (build_rewards, compute_rewards, extract_answer, make_format_reward,
                            make_math_reward, make_reasoning_gym_reward, resolve_reward,
                            safe_rewards)


def entry(answer, **meta):
    return {"question": "q", "answer": answer, "metadata": meta, "source": "test", "index": 0}


def score(fn, completions, answers):
    return fn([""] * len(completions), completions, [entry(a) for a in answers])


@pytest.mark.parametrize("spec,text,expected", [
    ("boxed", r"so \boxed{\frac{1}{2}} and \boxed{3}", "3"),
    ("boxed", r"nested \boxed{\frac{a}{b^{2}}} end", r"\frac{a}{b^{2}}"),
    ("boxed", r"truncated \boxed{12", None),
    ("last_number", "3 apples and 1,234.5 pears, 7 left.", "7"),
    ("last_number", "total is 1,234", "1234"),
    ("last_number", "x = -3/4", "-3/4"),
    ("boxed|last_number", r"\boxed{5} then 6", "5"),
    ("boxed|last_number", "no box, 6 then 8", "8"),
    ("answer_tag", "<answer> 12 </answer>", "12"),
    ("tail", "work\nAnswer: forty two.\nbye", "forty two"),
    ("tail", "work\nlast line  \n\n", "last line"),
])
def test_extraction(spec, text, expected):
    assert extract_answer(text, spec) == expected


def test_bad_extraction_spec_names_key():
    with pytest.raises(ValueError, match=r"reward\.options\.math\.extraction.*boxed\|last_number"):
        make_math_reward(extraction="boxd")


@pytest.mark.parametrize("completion,gold", [
    (r"The answer is \boxed{1/2}", "0.5"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{\frac12}", "1/2"),
    (r"\boxed{3.0}", "3"),
    (r"\boxed{3}", "3.0"),
    (r"\boxed{x^2+1}", "1+x^2"),
    (r"\boxed{\sqrt{2}}", r"\sqrt 2"),
])
def test_math_equivalent_forms(completion, gold):
    assert score(make_math_reward(), [completion], [gold]) == [1.0]


def test_math_wrong_and_empty():
    fn = make_math_reward()
    assert score(fn, [r"\boxed{41}", "no answer here", ""], ["42", "42", "42"]) == [0.0] * 3


def test_math_reward_logs_no_disabled_timeout_notice():
    # math-verify warns once per process that its own timeout is off; the deadline here replaces it, so a run's
    # log stays free of the notice. A fresh interpreter: the notice is shown at most once per process.
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from gpg_em.rewards import make_math_reward; "
            "print(make_math_reward()(['p'], [r'\\boxed{6}'], [{'answer': '6'}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[1.0]", done.stderr
    assert "Timeout is disabled" not in done.stderr, done.stderr


def test_math_boxed_preferred_and_last_number_fallback():
    with_fallback, strict = make_math_reward(), make_math_reward(fallback_last_number=False)
    # The box wins over a later number.
    assert score(with_fallback, [r"\boxed{42}, check: 41"], ["42"]) == [1.0]
    # No box: the last number counts only with the fallback on.
    assert score(with_fallback, ["2 + 40 = 42"], ["42"]) == [1.0]
    assert score(strict, ["2 + 40 = 42"], ["42"]) == [0.0]


def test_math_reward_off_main_thread():
    # math-verify's SIGALRM timeouts raise ValueError outside the main thread
    # unless switched off; the reward must still work there.
    out = []
    t = threading.Thread(target=lambda: out.append(score(make_math_reward(), [r"\boxed{0.5}"], ["1/2"])))
    t.start()
    t.join(30)
    assert out == [[1.0]]


def test_format_reward():
    fn = make_format_reward()
    texts = [r"so \boxed{7}", r"\boxed{}", "Answer: 7", "the answer is 7", "Final answer: x"]
    assert fn([""] * 5, texts, [entry("7")] * 5) == [1.0, 0.0, 1.0, 0.0, 1.0]
    custom = make_format_reward(regex=r"<answer>.+</answer>", value=0.5)
    assert custom(["", ""], ["<answer>1</answer>", "1"], [entry("1")] * 2) == [0.5, 0.0]
    with pytest.raises(ValueError, match=r"reward\.options\.format\.regex"):
        make_format_reward(regex="(")


def test_reasoning_gym_chain_sum_scored():
    from gpg_em.data import ReasoningGymSource
    e = ReasoningGymSource("chain_sum", seed=3, size=4)[1]
    fn = make_reasoning_gym_reward()
    gold = e["answer"]
    wrong = str(int(gold) + 1)
    completions = [rf"\boxed{{{gold}}}", f"so it is {gold}", rf"\boxed{{{wrong}}}", "no idea"]
    assert fn([""] * 4, completions, [e] * 4) == [1.0, 1.0, 0.0, 0.0]
    # A JSON round trip (TFDS) drops rg_entry; the scorer regenerates it.
    meta = {k: v for k, v in e["metadata"].items() if k != "rg_entry"}
    assert fn([""], [gold], [dict(e, metadata=meta)]) == [1.0]


def test_reasoning_gym_reward_rejects_file_entries():
    fn = make_reasoning_gym_reward()
    values, counts = safe_rewards(fn, [""], ["1"], [entry("1")], timeout_s=None)
    assert values.tolist() == [0.0] and counts["n_errors"] == 1


def test_registry_names_and_weighted_sum():
    comps = build_rewards(["math", "format"], weights=[1.0, 0.25])
    completions = [r"\boxed{4}", "it is 4", r"\boxed{5}"]
    total, metrics = compute_rewards(comps, [""] * 3, completions, [entry("4")] * 3, timeout_s=10)
    np.testing.assert_allclose(total, [1.25, 1.0, 0.25])
    assert metrics["reward/math/mean"] == pytest.approx(2 / 3)
    assert metrics["reward/format/n_errors"] == 0
    strict = resolve_reward("math", {"fallback_last_number": False})
    assert score(strict, ["it is 4"], ["4"]) == [0.0]


def test_user_reward_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(textwrap.dedent("""
        def length_reward(prompts, completions, entries, scale=1.0):
            return [scale * len(c) for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = resolve_reward("my_rewards_mod:length_reward")
    assert fn(["", ""], ["ab", "abcd"], [entry("1")] * 2) == [2, 4]
    comps = build_rewards("my_rewards_mod:length_reward", options={"length_reward": {"scale": 0.5}})
    assert comps[0].name == "length_reward"
    total, _ = compute_rewards(comps, [""], ["abcd"], [entry("1")])
    assert total.tolist() == [2.0]


@pytest.mark.parametrize("spec,pattern", [
    ("nope", r"reward\.fn='nope': unknown reward; expected one of \[.*'math'.*module\.path:function"),
    ("no_such_mod_xyz:fn", r"reward\.fn='no_such_mod_xyz:fn': cannot import module"),
    ("os.path:no_such_fn", r"reward\.fn='os\.path:no_such_fn': module 'os\.path' has no callable"),
])
def test_unknown_reward_message(spec, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        resolve_reward(spec)
    assert "\n" not in str(info.value)


def test_bad_options_and_weights():
    with pytest.raises(ValueError, match=r"reward\.options\.math"):
        resolve_reward("math", {"no_such_option": 1})
    with pytest.raises(ValueError, match=r"reward\.weights has 1 values for 2"):
        build_rewards(["math", "format"], weights=[1.0])


def test_raising_reward_zeroes_only_failing_samples():
    def picky(prompts, completions, entries):
        if any(c == "bad" for c in completions):
            raise RuntimeError("boom")
        return [1.0] * len(completions)
    values, counts = safe_rewards(picky, ["", "", ""], ["ok", "bad", "ok"], [entry("1")] * 3, 5)
    assert values.tolist() == [1.0, 0.0, 1.0]
    assert counts["n_errors"] == 1 and counts["n_timeouts"] == 0


@pytest.mark.parametrize("out", [[1.0, 2.0, 3.0], "xy", None, [[1.0, 2.0]]])
def test_wrong_length_or_type_counts_as_error(out):
    values, counts = safe_rewards(lambda p, c, e: out, ["", ""], ["a", "b"], [entry("1")] * 2, 5)
    assert values.tolist() == [0.0, 0.0] and counts["n_errors"] == 2


def test_non_finite_rewards():
    values, counts = safe_rewards(lambda p, c, e: [1.0, float("nan"), float("inf")],
                                  [""] * 3, ["a"] * 3, [entry("1")] * 3, 5)
    assert values.tolist() == [1.0, 0.0, 0.0] and counts["n_errors"] == 2


def test_hanging_reward_times_out():
    release = threading.Event()

    def hang(prompts, completions, entries):
        release.wait(30)
        return [1.0] * len(completions)

    try:
        start = time.monotonic()
        values, counts = safe_rewards(hang, ["", ""], ["a", "b"], [entry("1")] * 2, timeout_s=0.3)
        assert time.monotonic() - start < 2.0
        assert values.tolist() == [0.0, 0.0]
        assert counts["n_timeouts"] == 2 and counts["n_errors"] == 0
        # In a weighted sum the other components are unaffected.
        comps = [rewards.RewardComponent("hang", hang),
                 rewards.RewardComponent("format", make_format_reward())]
        total, metrics = compute_rewards(comps, [""], [r"\boxed{1}"], [entry("1")], timeout_s=0.3)
        assert total.tolist() == [1.0] and metrics["reward/hang/n_timeouts"] == 1
    finally:
        release.set()  # let the abandoned threads finish


def test_hanging_reward_off_main_thread_uses_thread_guard():
    release = threading.Event()

    def hang(prompts, completions, entries):
        release.wait(30)
        return [1.0]

    out = []
    t = threading.Thread(target=lambda: out.append(
        safe_rewards(hang, [""], ["a"], [entry("1")], timeout_s=0.3)))
    try:
        start = time.monotonic()
        t.start()
        t.join(10)
        assert time.monotonic() - start < 2.0
        values, counts = out[0]
        assert values.tolist() == [0.0] and counts["n_timeouts"] == 1 and counts["n_stuck"] >= 1
    finally:
        release.set()


def test_sympy_blowup_is_interrupted():
    # 10^(10^10) is one GIL-holding C call in sympy: only a signal stops it.
    fn = make_math_reward(timeout_s=0.5)
    start = time.monotonic()
    values, counts = safe_rewards(fn, ["", ""], [r"\boxed{10^{10^{10}}}", r"\boxed{0.5}"],
                                  [entry("1/2")] * 2, timeout_s=10)
    assert time.monotonic() - start < 3.0
    assert values.tolist() == [0.0, 1.0] and counts["n_timeouts"] == 0


def test_nested_deadlines():
    from gpg_em.rewards.deadline import call_with_deadline

    def sleepy(seconds):
        time.sleep(seconds)
        return "woke"

    # Inner deadline first: the inner call is cut, the outer one goes on.
    inner = lambda: call_with_deadline(0.1, sleepy, 5)  # noqa: E731
    assert call_with_deadline(5, lambda: (inner(), sleepy(0.01))) == (True, ((False, None), "woke"))
    # Outer deadline first: it wins even while an inner, longer one is active.
    start = time.monotonic()
    assert call_with_deadline(0.2, lambda: call_with_deadline(5, sleepy, 5)) == (False, None)
    assert time.monotonic() - start < 1.0
    # Code that catches Exception cannot swallow the deadline.
    def stubborn():
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001
            return "swallowed"
    assert call_with_deadline(0.1, stubborn) == (False, None)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # nothing left armed


def test_safe_rewards_inline_without_timeout():
    # Inline in the main thread: math-verify keeps its own SIGALRM timeouts.
    values, counts = safe_rewards(make_math_reward(), [""], [r"\boxed{2}"], [entry("2")], None)
    assert values.tolist() == [1.0]
    assert counts["n_errors"] == 0 and counts["n_timeouts"] == 0


def test_auto_reward_dispatches_by_entry():
    from gpg_em.data import ReasoningGymSource
    rg = ReasoningGymSource("chain_sum", seed=0, size=2)[0]
    fn = resolve_reward("auto")
    out = fn(["", ""], [f"= {rg['answer']}", r"\boxed{0.5}"], [rg, entry("1/2")])
    assert out == [1.0, 1.0]
