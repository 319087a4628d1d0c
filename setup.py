"""gpg-em: GPG and entropy-minimisation RL fine-tuning of language models in JAX."""
from setuptools import find_packages, setup

setup(
    name="gpg-em",
    version="0.1.0",
    description="Group policy gradient and entropy minimisation for LLM reasoning, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["gpg_em", "gpg_em.*", "configs", "configs.*"]),
    include_package_data=True,
    package_data={"gpg_em.kernels": ["*.cc", "*.h"]},  # compiled on first use (gpg_em/kernels/build.py)
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "etils[epath]",  # epath.Path, the path type orbax handlers take
        "chex>=0.1.87",
        "numpy>=1.26",
        "transformers>=4.46",
        "tokenizers>=0.20",
        "jinja2>=3.1",  # chat templates (transformers imports it lazily; PyTorch would bring it)
        "safetensors>=0.4",
        "gguf>=0.10",
        "sentencepiece",
        "ml_collections>=0.1.1",
        "reasoning-gym>=0.1.19",
        "math-verify>=0.7",
        "tensorflow-datasets>=4.9.7",
        "importlib_resources",
        "array_record>=0.5",
        "pyarrow>=14",
        "tqdm",
        "tensorboardX",
        "matplotlib",
    ],
    extras_require={
        # torch==2.13.0 is the CPU build available on local disk; it is the
        # reference implementation in tests and never imported at run time.
        "test": ["pytest>=8", "torch==2.13.0"],
        # the peer in benchmarks/train_step.py; never imported by the library or the tests
        "bench": ["torch==2.13.0", "trl==1.16.0"],
    },
    entry_points={"console_scripts": ["gpg-em=gpg_em.cli:main"]},
)
