"""Prepare prompt sources as TFDS array_record datasets and read them back.

Works without TensorFlow: tensorflow-datasets 4.9 imports without it when
`importlib_resources` is installed, and `as_data_source` reads array_record
files with plain Python/NumPy. The builder lives in the package folder
`gpg_em/data/tfds_prompts/` because TFDS locates a builder's resources
through its package.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from gpg_em.data.sources import Entry, _as_dict, make_entry


def _splits(source_config: Mapping[str, Any], split: str) -> dict[str, dict[str, Any]]:
    cfg = _as_dict(source_config)
    if "splits" in cfg:
        return {name: _as_dict(c) for name, c in cfg["splits"].items()}
    return {split: cfg}


def prepare_tfds(source_config: Mapping[str, Any], data_dir: str, split: str = "train"):
    """Writes the source's entries under data_dir/gpg_em_prompts/<config>/1.0.0.

    `source_config` is one source config (stored as `split`) or
    {"splits": {split name: source config}}. Preparing twice is a no-op.
    Returns the builder; read with `builder.as_data_source(split)` or
    `TfdsSource(builder, split)`.
    """
    from gpg_em.data.tfds_prompts import Builder, PromptsConfig
    config = PromptsConfig.from_splits(_splits(source_config, split))
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsSource(Sequence):
    """Entries read back from a prepared builder (random access, no TensorFlow)."""

    def __init__(self, builder, split: str = "train"):
        if split not in builder.info.splits:
            raise ValueError(f"TFDS dataset {builder.data_dir} has no split {split!r}; "
                             f"it has {sorted(builder.info.splits)}")
        self.split = split
        self._data = builder.as_data_source(split)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        # array_record raises ValueError out of range; Sequence iteration and
        # negative indices need IndexError semantics.
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        ex = self._data[i % len(self)]
        return make_entry(_text(ex["question"]), _text(ex["answer"]),
                          json.loads(_text(ex["metadata"])), _text(ex["source"]), int(ex["index"]))


def tfds_source(data_dir: str | None = None, source: Mapping[str, Any] | None = None,
                split: str = "train", builder_dir: str | None = None) -> Sequence[Entry]:
    """The "tfds" source kind: prepare `source` under `data_dir` (if not yet)
    and read `split`, or open an already prepared `builder_dir`."""
    if builder_dir is not None:
        import tensorflow_datasets as tfds
        return TfdsSource(tfds.builder_from_directory(builder_dir), split)
    if data_dir is None or source is None:
        raise ValueError("tfds source config needs 'data_dir' and 'source' (a source config "
                         "to prepare), or 'builder_dir' (a prepared dataset)")
    return TfdsSource(prepare_tfds(source, data_dir, split), split)
