"""Model definitions: config, pattern parser, mixers, LanguageModel. No distributed code here."""
from __future__ import annotations

from models.config import ModelConfig
from models.context import MixerContext
from models.flops import flops_per_token
from models.lm import LanguageModel
from models.pattern import PatternError, parse_pattern

__all__ = ["ModelConfig", "MixerContext", "LanguageModel", "build", "flops_per_token",
           "parse_pattern", "PatternError"]


def build(cfg: ModelConfig) -> LanguageModel:
    """Build the language model described by cfg (its pattern picks the mixers)."""
    return LanguageModel(cfg)
