"""ClipBERT: end-to-end video-and-language learning via sparse sampling (Lei et al., CVPR 2021)."""

__version__ = "0.1.0"
