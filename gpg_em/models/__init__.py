"""Decoder models: config, Flax decoder, weight loading/export, log-probs."""
from gpg_em.models.config import ModelConfig, from_hf_config, to_hf_config
from gpg_em.models.decoder import Decoder, LayerCache, init_cache
from gpg_em.models.model import (Model, forward, head_weight, hidden_states, init_params, logical_axes,
                                 positions_from_mask)
from gpg_em.models.logprobs import (chunked_logprobs, completion_logprobs, grouped_completion_logprobs,
                                     logprob_entropy_from_logits)
from gpg_em.models.export import save_pretrained
from gpg_em.models.hf import ModelFileNotFoundError, ModelLoadError
from gpg_em.models.loading import BUILTIN_MODELS, load_pretrained
