"""`gpg-em train | generate | export | plan`: a thin layer over the library.

    gpg-em train [--config configs/gpg.py] [--workdir DIR] [--config.KEY=VALUE ...]
    gpg-em generate --model smollm2-135m-instruct --prompt "..." [--max-new-tokens N] [--em-inf]
    gpg-em eval --model SPEC_OR_WORKDIR [--task chain_sum | --data FILE] [--mode greedy,avg,maj,em_inf,adaptive]
    gpg-em export --workdir DIR --out HF_DIR
    gpg-em plan [--config ...] [--mesh D,F,T] [--devices N] [--json | --print-config] [--config.KEY=VALUE ...]
                (per-device memory of the update step and sampler, compiled ahead of time; nothing loaded)

Errors are printed as one line (exit status 2 for bad input, 1 for a run that
stopped itself, 128 + N after signal N); add --debug anywhere for the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# transformers prints an advisory at import when PyTorch is absent; the run time never needs it.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"gpg-em: --config.{key} needs a value")
                value, i = argv[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _config(args, overrides):
    from gpg_em.configuration import get
    return get(args.config, overrides)


def cmd_train(args, overrides) -> None:
    from gpg_em.parallel import initialize_distributed
    c = _config(args, overrides)
    initialize_distributed(c.distributed)
    from gpg_em.train.loop import train
    record = train(c, args.workdir)
    if record:
        print(f"done: step {record['step']} reward_mean {record['reward_mean']:.4f} loss {record['loss']:.5f}; "
              f"metrics in {args.workdir}/metrics.jsonl")


def _fake_devices(n: int) -> None:
    """Asks XLA for `n` CPU devices; must run before JAX starts its backend."""
    import os
    if "jax" in sys.modules and sys.modules["jax"].config.jax_platforms not in (None, "", "cpu"):
        raise SystemExit("gpg-em plan --devices: JAX already started on another platform")
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])


def cmd_plan(args, overrides) -> None:
    c = _config(args, overrides)
    if args.print_config:
        print(c.to_json(indent=2))
        return
    if args.devices:
        _fake_devices(args.devices)
    from gpg_em.train.plan import format_plan, plan
    shape = tuple(int(s) for s in args.mesh.split(",")) if args.mesh else tuple(c.mesh.shape)
    try:
        result = plan(c, shape)
    except ValueError as e:
        raise SystemExit(f"gpg-em plan: {e}") from None
    print(json.dumps(result) if args.json else format_plan(result))


def check_sampling_flags(args, command: str) -> None:
    """One-line errors for sampling flags out of range (before any model is loaded)."""
    from gpg_em.errors import UserError
    for flag, value, ok, expected in (
            ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "an integer >= 1"),
            ("--num-samples", args.num_samples, args.num_samples >= 1, "an integer >= 1"),
            ("--temperature", args.temperature, args.temperature >= 0, ">= 0"),
            ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]")):
        if not ok:
            raise UserError(f"{command} {flag} {value}: expected {expected}")


def cmd_generate(args, _) -> None:
    check_sampling_flags(args, "generate")
    from gpg_em.models import load_pretrained
    from gpg_em.rollout import generate
    from gpg_em.decoding_args import decoding_kwargs
    model = load_pretrained(args.model, dtype=args.dtype)
    greedy = args.temperature == 0 and not (args.em_inf or args.adaptive_temperature)
    out = generate(model, args.prompt, max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                   greedy=greedy, temperature=args.temperature or 1.0, top_p=args.top_p, seed=args.seed,
                   **decoding_kwargs(args))
    for b, text in enumerate(out.texts):
        if not args.jsonl:
            print(text)
            continue
        m = out.mask[b].astype(bool)
        print(json.dumps({"prompt": args.prompt[b // args.num_samples], "sample": b % args.num_samples,
                          "text": text, "num_tokens": int(m.sum()), "logprob": float(out.logprobs[b][m].sum()),
                          "mean_entropy": float(out.entropies[b][m].mean()) if m.any() else 0.0}))


def cmd_eval(args, _) -> None:
    from gpg_em.eval.cli import run_eval
    run_eval(args)


def cmd_export(args, _) -> None:
    from gpg_em.train.export import export_workdir
    path = export_workdir(args.workdir, args.out, step=args.step, force=args.force)
    print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpg-em", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command")
    for name in ("train", "plan"):
        s = sub.add_parser(name, help=f"{name} (config overrides: --config.KEY=VALUE)")
        s.add_argument("--config", default=None, help="config file with get_config() (default: configs/gpg.py)")
        if name == "train":
            s.add_argument("--workdir", default="runs/default", help="checkpoints, metrics.jsonl, TensorBoard")
        else:
            s.add_argument("--mesh", default=None, help="data,fsdp,tensor sizes (-1: the rest); default mesh.shape")
            s.add_argument("--devices", type=int, default=0, help="plan for N fake CPU devices")
            s.add_argument("--json", action="store_true", help="print the plan as one JSON object (bytes)")
            s.add_argument("--print-config", action="store_true", help="print the resolved config, build nothing")
    g = sub.add_parser("generate", help="sample or greedily decode prompts")
    g.add_argument("--model", default="smollm2-135m-instruct")
    g.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    g.add_argument("--num-samples", type=int, default=1, help="samples per prompt (prompt-major output)")
    g.add_argument("--jsonl", action="store_true",
                   help="one JSON line per sample: prompt, sample, text, num_tokens, logprob, mean_entropy")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    from gpg_em.decoding_args import add_decoding_args
    add_decoding_args(g)
    from gpg_em.eval.cli import add_eval_parser
    add_eval_parser(sub)
    e = sub.add_parser("export", help="write a run's policy as a Hugging Face folder")
    e.add_argument("--workdir", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    e.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    return p


COMMANDS = {"train": cmd_train, "plan": cmd_plan, "generate": cmd_generate, "eval": cmd_eval, "export": cmd_export}


def _one_line(command: str, e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"gpg-em {command}: {text}"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    rest, overrides = _split_overrides(argv)
    if not rest or rest[0].startswith("-") and rest[0] not in ("-h", "--help"):
        rest = ["train"] + rest  # `gpg-em` alone runs the default training job
    args = parser().parse_args(rest)
    from gpg_em.errors import RunStopped
    try:
        COMMANDS[args.command](args, overrides)
    except RunStopped as e:  # the run stopped itself; its message says what was kept
        if debug:
            raise
        print(_one_line(args.command, e), file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"gpg-em {args.command}: interrupted (the last saved checkpoint is kept)", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError) as e:  # bad input; incl. ConfigError
        if debug:
            raise
        print(_one_line(args.command, e) + " (--debug for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
