"""Command-line options for EM-INF and adaptive-temperature decoding, shared by `generate` and `eval`."""
from __future__ import annotations

import argparse

from gpg_em.rollout import AdaptiveTemperatureConfig, EMInfConfig


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    d, a = EMInfConfig(), AdaptiveTemperatureConfig()
    p.add_argument("--em-inf", action="store_true", help="EM-INF: optimise each step's logits to lower entropy")
    p.add_argument("--em-inf-lr", type=float, default=d.lr)
    p.add_argument("--em-inf-steps", type=int, default=d.n_steps)
    p.add_argument("--em-inf-kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--em-inf-delta", type=float, default=d.delta, help="stop once the entropy is below this")
    p.add_argument("--adaptive-temperature", action="store_true",
                   help="the EM paper's baseline: largest tau with H(z/tau) <= max(alpha*H(z), delta)")
    p.add_argument("--adaptive-alpha", type=float, default=a.alpha)
    p.add_argument("--adaptive-delta", type=float, default=a.delta)
    p.add_argument("--adaptive-tau-min", type=float, default=a.tau_min, help="lowest temperature searched")
    p.add_argument("--adaptive-iters", type=int, default=a.n_iters, help="bisection steps")


def decoding_kwargs(args: argparse.Namespace) -> dict:
    """`em_inf` / `adaptive_temperature` keyword arguments for `gpg_em.rollout.generate`."""
    if args.em_inf and args.adaptive_temperature:
        raise SystemExit("gpg-em: --em-inf and --adaptive-temperature are alternatives; pick one")
    out = {}
    if args.em_inf:
        out["em_inf"] = EMInfConfig(lr=args.em_inf_lr, n_steps=args.em_inf_steps, kl_weight=args.em_inf_kl_weight,
                                    delta=args.em_inf_delta)
    if args.adaptive_temperature:
        out["adaptive_temperature"] = adaptive_config(args)
    return out


def adaptive_config(args: argparse.Namespace) -> AdaptiveTemperatureConfig:
    return AdaptiveTemperatureConfig(alpha=args.adaptive_alpha, delta=args.adaptive_delta,
                                     tau_min=args.adaptive_tau_min, n_iters=args.adaptive_iters)
