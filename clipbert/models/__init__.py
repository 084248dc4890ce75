"""The ClipBERT model (issue 4): config + presets, CNN, temporal fusion, BERT fusion, heads, weights.

Design decisions (see each module's docstring for the details):
- Frames arrive normalized per cfg.pixel_mean / pixel_std (0..255 scale) in cfg.channel_order; the model
  does no channel flip (the original flipped RGB -> BGR inside; here the data pipeline does it).
- Temporal fusion runs on the grid-encoder output (H channels), where the original mean-pools frames.
- Pixel random sampling is active in train mode whenever cfg.pixel_random_sampling_size > 0 (the
  pre-training config sets it; fine-tuning leaves it 0, as in the paper).
- score() returns per-clip logits [B, M, N, K]; clip aggregation belongs to the trainer.
- Parameter names: ours are torchvision-style for the CNN and BERT-style for the rest;
  clipbert.models.weights converts detectron2 and original-ClipBERT names.
"""

from clipbert.models.clipbert import ClipBert, VisualTokens
from clipbert.models.config import PRESETS, ClipBertConfig
from clipbert.models.flops import forward_flops, training_flops

__all__ = ["PRESETS", "ClipBert", "ClipBertConfig", "VisualTokens", "forward_flops", "training_flops"]
