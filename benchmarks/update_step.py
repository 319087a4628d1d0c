"""The update step alone, on one collected batch: XLA's memory plan and the wall time of repeated updates.

    python benchmarks/update_step.py [--updates 4] [--set train.micro_batch_size=8 ...]

Builds the train-step benchmark's gpg_em run (`train_step.gpg_em_config`:
SmolLM2-135M-Instruct float32, chain_sum, 4 prompts x 8 samples, <= 128
tokens), samples one batch, then prints the update's compiled memory
analysis (argument, output and temporary bytes) and the seconds of
`--updates` updates in a row on that batch (the first includes compilation
or a persistent-cache load). `--set key=value` overrides a config entry
(Python literal values), to compare settings on the same work.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    import jax
    from train_step import gpg_em_config
    from gpg_em.train.loop import Trainer
    c = gpg_em_config(128)
    for item in a.set:
        key, _, value = item.partition("=")
        c.update_from_flattened_dict({key: ast.literal_eval(value)})
    trainer = Trainer(c, tempfile.mkdtemp(prefix="bench_update_"))
    batch, _ = trainer.collect(0)
    arrays = trainer.train_batch(batch)
    rng = jax.random.PRNGKey(0)
    mem = trainer.run.update.lower(trainer.run.state, arrays, rng).compile().memory_analysis()
    gib = lambda n: f"{n / 2 ** 30:.2f} GiB"
    print(f"settings {a.set or 'defaults'}; {int(batch['completion_mask'].sum())} completion tokens, "
          f"packed width {arrays['pack_index'].shape[1] if 'pack_index' in arrays else '-'}")
    print(f"update memory: arguments {gib(mem.argument_size_in_bytes)}, outputs {gib(mem.output_size_in_bytes)} "
          f"(aliased {gib(mem.alias_size_in_bytes)}), temporaries {gib(mem.temp_size_in_bytes)}")
    seconds = []
    for _ in range(a.updates):
        t = time.perf_counter()
        trainer.run.state, metrics = trainer.run.update(trainer.run.state, arrays, rng)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - t)
    print("update seconds:", ", ".join(f"{s:.1f}" for s in seconds))


if __name__ == "__main__":
    main()
