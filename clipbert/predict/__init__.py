"""Inference on your own videos and images with an exported model: `python -m clipbert.predict`.

It loads a `ClipBert.save_pretrained` directory (`<output_dir>/model`) with its run's config.json, samples
each video's Ntest clips evenly as the evaluation does (PyAV decoding, the run's test sampling, image size,
frames per clip, normalization), and scores them with the trainer's own functions:
- retrieval (msrvtt_ret, didemo_ret, anet_ret): a videos x texts table of the score evaluate.py ranks,
  with the best video per text and the best text per video;
- open-ended QA (msrvtt_qa, tgif_frameqa): the top-k answers with their probabilities;
- multiple choice (tgif_action, tgif_transition; msrvtt_mc with a retrieval model): the option scores and
  the chosen option;
- on images (`--image`, one clip of one frame, as the image tasks train): VQA's top-k answers with their
  sigmoid scores, and a pre-trained model's images x texts table of its image-text matching head
  (with its MLM head's top tokens for each [MASK] in a text).
A missing, unreadable or corrupt video or image is skipped and reported with its reason.
"""

from clipbert.predict.cli import main

__all__ = ["main"]
