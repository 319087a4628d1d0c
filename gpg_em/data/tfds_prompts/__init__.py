"""The project's TFDS dataset builder (a package folder, as TFDS requires)."""
from gpg_em.data.tfds_prompts.tfds_prompts_dataset_builder import Builder, PromptsConfig

__all__ = ["Builder", "PromptsConfig"]
