"""Rollouts: jitted prefill + while_loop decode with a donated KV cache, EM-INF, adaptive temperature."""
from gpg_em.rollout.adaptive_temperature import (AdaptiveTemperatureConfig, adaptive_tau, adaptive_tau_newton,
                                                 adaptive_temperature_logits)
from gpg_em.rollout.api import GenerationResult, encode_prompts, generate
from gpg_em.rollout.em_inf import EMInfConfig, em_inf_logits, em_inf_logits_fused, entropy_of_logits
from gpg_em.rollout.sampler import decode, left_pad, prefill, prompt_bucket, sample
from gpg_em.rollout.sampling import SamplingConfig, choose_tokens
from gpg_em.rollout.state import DecodeState, SampleOutput
