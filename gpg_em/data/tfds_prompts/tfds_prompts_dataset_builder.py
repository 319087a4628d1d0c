"""TFDS builder that stores prompt entries from any `gpg_em.data` source.

One builder config per source config: its name is a hash of the canonical
JSON of the config and its description is that JSON, so the data directory
says what it holds. Entries are stored flat: metadata as JSON text (the
in-memory reasoning-gym entry is dropped; the scorer regenerates it from
rg_task/rg_options/rg_seed/rg_index).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

NAME = "gpg_em_prompts"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclasses.dataclass(eq=False)
class PromptsConfig(tfds.core.BuilderConfig):
    # {split name: source config}; see gpg_em.data.sources
    splits_json: str = "{}"

    @classmethod
    def from_splits(cls, splits: Mapping[str, Mapping[str, Any]]) -> "PromptsConfig":
        text = canonical_json(splits)
        # Files enter the name by size and mtime too, so an edited file is
        # prepared again instead of silently reusing the old copy.
        stamps = [(c["path"], *_stat(c["path"])) for c in splits.values() if c.get("path")]
        digest = hashlib.sha1((text + canonical_json(stamps)).encode()).hexdigest()[:12]
        return cls(name=f"src_{digest}", description=text, splits_json=text)


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:  # reported with file and key by the source loader later
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def entry_to_example(entry: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in entry["metadata"].items() if k != "rg_entry"}
    return {"question": entry["question"], "answer": entry["answer"],
            "metadata": canonical_json(meta), "source": entry["source"],
            "index": np.int64(entry["index"])}


class Builder(tfds.core.GeneratorBasedBuilder):
    """Prompt entries (question, gold answer, metadata) for RL fine-tuning."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIG_CLASS = PromptsConfig

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "question": text, "answer": text, "metadata": text, "source": text,
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=None,
            # Keep the source's order, so a TFDS copy reads back like its source.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local or procedural
        splits = json.loads(self.builder_config.splits_json)
        return {name: self._generate_examples(cfg) for name, cfg in splits.items()}

    def _generate_examples(self, source_config):
        from gpg_em.data.sources import make_source
        source = make_source(source_config)
        for i in range(len(source)):
            yield i, entry_to_example(source[i])
