"""`gpg-em eval`: benchmark a pretrained model or a training run on held-out problems.

    gpg-em eval --model smollm2-135m-instruct --task chain_sum --num-prompts 64 --mode greedy,avg,maj -k 8
    gpg-em eval --model runs/gpg --mode greedy,em_inf --em-inf-delta 0.3 --out runs/gpg/eval.json
    gpg-em eval --model hf/policy --data gsm8k_test.jsonl --question-field question --answer-field answer

`--model` is a built-in name, a Hugging Face folder, a .gguf file, or a
training workdir (its latest checkpoint, or --step; its prompt format and
held-out task are the defaults then). Problems are reasoning-gym's `--task`
generated with the held-out `--seed` (default 12345, as configs/base.py's
eval source) or the first `--num-prompts` records of a JSONL/Parquet file.
Writes every mode's metrics, compute and per-problem answers as JSON
(`--out`) and prints one table row per mode.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

HELD_OUT_SEED = 12345
DEFAULT_TASK = "chain_sum"


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `eval` sub-command to an argparse subparsers object."""
    e = subparsers.add_parser("eval", help="pass@1 / avg@k / pass@k / maj@k / EM-INF / adaptive-T evaluation",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--model", default=None, help="built-in name, HF folder, .gguf file or training workdir")
    e.add_argument("--preset", default=None, help="a Python file whose get_config() sets defaults for these "
                                                  "options, e.g. configs/paper/eval/em_inf.py")
    e.add_argument("--step", type=int, default=None, help="checkpoint step of a workdir (default: latest)")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    d = e.add_argument_group("problems")
    d.add_argument("--task", default=None,
                   help=f"reasoning-gym task (default: the run's eval task, else {DEFAULT_TASK})")
    d.add_argument("--task-options", default=None, help='reasoning-gym options as JSON, e.g. \'{"max_terms": 3}\'')
    d.add_argument("--data", default=None, help="a .jsonl or .parquet benchmark file instead of a task")
    d.add_argument("--question-field", default=None)
    d.add_argument("--answer-field", default=None)
    d.add_argument("--answer-format", default="auto", choices=["auto", "gsm8k", "boxed", "raw"])
    d.add_argument("--num-prompts", type=int, default=64, help="problems (a file: its first N; 0 = all)")
    d.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out task seed (never the train seed 0)")
    d.add_argument("--system-prompt", default=None, help="default: the run's, else none")
    d.add_argument("--instruction", default=None, help="appended to each question; default: the run's, else "
                                                        "'Put your final answer within \\boxed{}.'")
    s = e.add_argument_group("decoding")
    s.add_argument("--mode", default="greedy,avg,maj", help="comma list of greedy,avg,maj,em_inf,adaptive")
    s.add_argument("-k", "--num-samples", type=int, default=8, help="samples per problem of sampled modes")
    s.add_argument("--max-new-tokens", type=int, default=96)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--sample-seed", type=int, default=0, help="decoding RNG seed")
    s.add_argument("--rows-per-call", type=int, default=64, help="completions per sampler call (memory)")
    s.add_argument("--decode-slots", type=int, default=0,
                   help="rows of a call decoded at once, continuous batching (0: all; -1: from free memory)")
    from gpg_em.decoding_args import add_decoding_args  # the --em-inf-* / --adaptive-* flags of `generate`
    add_decoding_args(s)  # --em-inf / --adaptive-temperature add the em_inf / adaptive modes
    g = e.add_argument_group("grading and output")
    g.add_argument("--reward", default="auto", help="correctness reward: auto (reasoning-gym scorer or "
                                                    "math-verify), math, reasoning_gym, or module:function")
    g.add_argument("--extraction", default=None, help="answer extraction chain (default boxed|last_number)")
    g.add_argument("--out", default="eval_results.json", help="JSON results file")
    g.add_argument("--keep-texts", action="store_true", help="store every completion's text in the JSON")
    return e


def decoding_configs(args):
    """(EMInfConfig, AdaptiveTemperatureConfig) from the shared decoding flags (defaults: the papers')."""
    from gpg_em.rollout import AdaptiveTemperatureConfig, EMInfConfig
    from gpg_em.decoding_args import adaptive_config
    em = EMInfConfig(lr=args.em_inf_lr, n_steps=args.em_inf_steps, kl_weight=args.em_inf_kl_weight,
                     delta=args.em_inf_delta)
    return em, adaptive_config(args)


def modes_of(args) -> list[str]:
    """--mode's comma list, plus em_inf / adaptive when --em-inf / --adaptive-temperature are given."""
    from gpg_em.eval.harness import MODES
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    modes += [m for flag, m in ((args.em_inf, "em_inf"), (args.adaptive_temperature, "adaptive"))
              if flag and m not in modes]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"gpg-em eval: --mode {args.mode!r}: unknown {bad}; expected a comma list of {list(MODES)}")
    return modes


def _task_options(text: str) -> dict:
    from gpg_em.errors import UserError
    try:
        options = json.loads(text)
    except ValueError as e:
        raise UserError(f"--task-options {text!r}: not JSON ({e}); expected e.g. '{{\"max_terms\": 3}}'") from None
    if not isinstance(options, dict):
        raise UserError(f"--task-options {text!r}: expected a JSON object of option: value")
    return options


def check_flags(args) -> None:
    """One-line errors for out-of-range numbers, before any model is loaded."""
    from gpg_em.cli import check_sampling_flags
    from gpg_em.errors import UserError
    check_sampling_flags(args, "eval")
    if args.rows_per_call < 1:
        raise UserError(f"eval --rows-per-call {args.rows_per_call}: expected an integer >= 1")
    if args.decode_slots < -1:
        raise UserError(f"eval --decode-slots {args.decode_slots}: expected 0 (all rows at once), -1 (from free "
                        "memory) or a slot count >= 1")
    if args.task_options:
        _task_options(args.task_options)


def load_problems(args, run_config=None) -> tuple[list[dict], dict[str, Any]]:
    """(entries, a description of where they came from)."""
    from gpg_em.data import make_source
    if args.data:
        kind = "parquet" if args.data.endswith(".parquet") else "jsonl"
        spec = {"kind": kind, "path": args.data, "question_field": args.question_field,
                "answer_field": args.answer_field, "answer_format": args.answer_format}
        source = make_source(spec)
        n = len(source) if args.num_prompts <= 0 else min(args.num_prompts, len(source))
        return [source[i] for i in range(n)], spec
    task, options = DEFAULT_TASK, {}
    run_source = run_config.data.eval_source if run_config is not None else None
    if args.task is None and run_source is not None and run_source.get("kind") == "reasoning_gym":
        task, options = run_source.task, dict(run_source.options or {})
    elif args.task is not None:
        task = args.task
    if args.task_options:
        options = _task_options(args.task_options)
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1 for a reasoning-gym task")
    spec = {"kind": "reasoning_gym", "task": task, "options": options, "seed": args.seed, "size": args.num_prompts}
    source = make_source(spec)
    return [source[i] for i in range(len(source))], spec


def formatter_for(args, run_config=None):
    from gpg_em.data import DEFAULT_INSTRUCTION, PromptFormatter
    system, instruction = None, DEFAULT_INSTRUCTION
    if run_config is not None:
        system, instruction = run_config.data.system_prompt or None, run_config.data.instruction or None
    if args.system_prompt is not None:
        system = args.system_prompt or None
    if args.instruction is not None:
        instruction = args.instruction or None
    return PromptFormatter(system_prompt=system, instruction=instruction)


COLUMNS = ("mode", "headline", "score", "avg@k", "pass@k", "maj@k", "reward", "entropy", "tokens", "gen s", "tok/s")


def table(results: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table, one row per mode (avg/pass/maj columns at the mode's own k)."""
    rows = [COLUMNS]
    for mode, r in results.items():
        m, k = r["metrics"], r["k"]
        get = lambda key: f"{m[key]:.3f}" if key in m else "-"
        shared = f" (={r['shared_generation_with']})" if r["shared_generation_with"] else ""
        rows.append((mode, r["headline"], f"{r['score']:.3f}", get(f"avg@{k}"), get(f"pass@{k}"), get(f"maj@{k}"),
                     f"{r['reward_mean']:.3f}", f"{r['entropy_mean']:.3f}", str(r["tokens"]),
                     f"{r['generate_seconds']:.1f}{shared}", f"{r['tokens_per_second']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def run_eval(args) -> dict[str, Any]:
    """Runs `gpg-em eval` from parsed args; writes args.out and prints the table. Returns the JSON dict."""
    from gpg_em.eval.harness import evaluate_modes
    from gpg_em.eval.presets import apply_preset
    apply_preset(args, default_args())
    if not args.model:
        raise SystemExit("gpg-em eval: --model is required (or a --preset that sets model)")
    from gpg_em.eval.policy import load_model
    from gpg_em.rewards import DEFAULT_EXTRACTION
    modes = modes_of(args)
    check_flags(args)
    em_inf, adaptive = decoding_configs(args)
    model, info = load_model(args.model, dtype=args.dtype, step=args.step)
    run_config = info.pop("run_config", None)
    entries, problems = load_problems(args, run_config)
    formatter = formatter_for(args, run_config)
    extraction = args.extraction or DEFAULT_EXTRACTION
    results = evaluate_modes(
        model, entries, formatter=formatter, modes=modes, k=args.num_samples, max_new_tokens=args.max_new_tokens,
        seed=args.sample_seed, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, em_inf=em_inf,
        adaptive_temperature=adaptive, reward_fn=args.reward, extraction=extraction,
        rows_per_call=args.rows_per_call, decode_slots=args.decode_slots, keep_texts=args.keep_texts)
    out = {"model": info, "problems": problems, "formatter": dataclasses.asdict(formatter), "argv": sys.argv[1:],
           "results": results}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, default=str)
    print(table(results))
    if args.out:
        print(f"wrote {args.out}")
    return out


def default_args() -> argparse.Namespace:
    """Every `gpg-em eval` option at its default."""
    p = argparse.ArgumentParser(prog="gpg-em")
    add_eval_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["eval"])


def main(argv: list[str] | None = None) -> None:
    """`python -m gpg_em.eval.cli ...` (the same options as `gpg-em eval`)."""
    p = argparse.ArgumentParser(prog="gpg-em")
    add_eval_parser(p.add_subparsers(dest="command"))
    run_eval(p.parse_args(["eval"] + (sys.argv[1:] if argv is None else list(argv))))


if __name__ == "__main__":
    main()
