"""The ClipBERT model (issue 4): config + presets, CNN, temporal fusion, BERT fusion, heads, weights."""

from clipbert.models.clipbert import ClipBert, VisualTokens
from clipbert.models.config import PRESETS, ClipBertConfig
from clipbert.models.flops import forward_flops, training_flops

__all__ = ["PRESETS", "ClipBert", "ClipBertConfig", "VisualTokens", "forward_flops", "training_flops"]
