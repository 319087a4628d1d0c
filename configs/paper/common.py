"""What every paper preset shares: a local Hugging Face folder, a local data file, bfloat16, a real mesh.

Nothing is downloaded: `model.name` is a folder holding config.json, the tokenizer and safetensors
weights; `data.source.path` / `data.eval_source.path` are local .jsonl or .parquet files. The
defaults below are the reference repositories' own relative layout (`models/...`, `datas/...`);
point them at your copies:

    gpg-em train --config configs/paper/gpg_qwen25_math_7b.py --workdir runs/gpg7b \\
        --config.model.name=/ckpt/Qwen2.5-Math-7B --config.data.source.path=/data/simplelr_l35.parquet
    gpg-em plan --config configs/paper/gpg_qwen25_math_7b.py --devices 8   # per-device memory on the mesh
"""
import ml_collections

from configs.base import get_config as base


def file_source(path: str, question_field=None, answer_field=None, answer_format: str = "auto"):
    """A local JSONL/Parquet source (fields picked automatically when None: question|problem|prompt,
    answer|solution)."""
    kind = "parquet" if path.endswith(".parquet") else "jsonl"
    return ml_collections.ConfigDict(dict(kind=kind, path=path, question_field=question_field,
                                          answer_field=answer_field, answer_format=answer_format))


def paper_base(model_dir: str, train_file: str, eval_file: str = "datas/math500/test.jsonl"):
    """configs/base.py with a local model folder and data files, bfloat16, no reasoning-gym task."""
    c = base()
    c.model.name = model_dir
    c.model.dtype = "bfloat16"
    c.data.source = file_source(train_file)
    c.data.eval_source = file_source(eval_file)
    c.reward.fn = "math"  # math-verify against the record's answer
    c.eval.num_prompts = 500
    c.mesh.shape = (1, -1, 1)  # FSDP over every device: a 7B model's AdamW state does not fit one 80 GB GPU
    return c


def rewards(block, fn, weights=None, options=None):
    """`block` (the base `reward` block: every other key kept) with several weighted reward functions
    (configs/base.py types fn as one name, so the block is rebuilt rather than assigned into)."""
    return ml_collections.ConfigDict(dict(block.to_dict(), fn=list(fn), weights=list(weights) if weights else None,
                                          options=dict(options or {})))
