"""Decoder models: config, Flax decoder, weight loading/export, log-probs."""
from gpg_em.models.config import ModelConfig, from_hf_config, to_hf_config
from gpg_em.models.decoder import Decoder, LayerCache, init_cache
from gpg_em.models.model import (Model, forward, head_weight, hidden_states, init_params, logical_axes,
                                 positions_from_mask)
