"""Peak memory of per-token log-probs + entropies (forward and gradient), chunked vs naive.

    python benchmarks/logprob_memory.py [--tokens 16384] [--vocab 151936] [--hidden 896] [--run]

Prints XLA's compiled temp-buffer size for both (the naive one is only
compiled, never run) and, with --run, executes the chunked version and reports
the process's peak RSS.
"""
import argparse
import resource

import jax
import jax.numpy as jnp

from gpg_em.models import chunked_logprobs


def loss_chunked(h, w, y, chunk):
    logp, ent = chunked_logprobs(h, w, y, chunk_size=chunk)
    return logp.sum() + ent.sum()


def loss_naive(h, w, y):
    z = jax.nn.log_softmax(jnp.dot(h, w), -1)
    return jnp.take_along_axis(z, y[..., None], -1).sum() - (jnp.exp(z) * z).sum()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--run", action="store_true")
    a = p.parse_args()
    B, T = a.batch, a.tokens // a.batch
    h = jax.ShapeDtypeStruct((B, T, a.hidden), jnp.float32)
    w = jax.ShapeDtypeStruct((a.hidden, a.vocab), jnp.float32)
    y = jax.ShapeDtypeStruct((B, T), jnp.int32)
    grad = lambda f: jax.jit(jax.grad(f, (0, 1)))
    naive = grad(loss_naive).lower(h, w, y).compile().memory_analysis().temp_size_in_bytes
    chunk_fn = grad(lambda h, w, y: loss_chunked(h, w, y, a.chunk))
    chunked = chunk_fn.lower(h, w, y).compile().memory_analysis().temp_size_in_bytes
    gib = 2 ** 30
    print(f"B*T={B * T} V={a.vocab} D={a.hidden}: full float32 logits alone = {B * T * a.vocab * 4 / gib:.2f} GiB")
    print(f"naive   forward+grad temp memory: {naive / gib:.2f} GiB")
    print(f"chunked forward+grad temp memory: {chunked / gib:.2f} GiB (chunk={a.chunk}); ratio {naive / chunked:.1f}x")
    if a.run:
        key = jax.random.PRNGKey(0)
        args = (jax.random.normal(key, h.shape), jax.random.normal(key, w.shape) * 0.02,
                jax.random.randint(key, y.shape, 0, a.vocab))
        jax.block_until_ready(chunk_fn(*args))
        print(f"chunked run: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
