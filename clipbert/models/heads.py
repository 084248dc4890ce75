"""Task heads on BERT's pooled output, and BERT's pre-training heads (MLM tied to words, ITM)."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform


def _register_external_for_zero3(module: nn.Module, parameter: nn.Parameter) -> None:
    """ZeRO-3 partitions parameters per owning module; one used by another module's forward must be
    registered there. Only when the trainer has imported deepspeed (importing it here would be slow)."""
    deepspeed = sys.modules.get("deepspeed")
    if deepspeed is not None:
        deepspeed.zero.register_external_parameter(module, parameter)


class ClassifierHead(nn.Sequential):
    """Linear(H, 2H), ReLU, Linear(2H, K); names classifier.0 / classifier.2 match the original."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__(
            nn.Linear(hidden_size, hidden_size * 2),
            nn.ReLU(),
            nn.Linear(hidden_size * 2, num_classes),
        )


class MLMHead(nn.Module):
    """BERT cls.predictions: transform (dense, act, LayerNorm) then the word-embedding matrix + bias."""

    def __init__(self, bert_config, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(bert_config)
        self.bias = nn.Parameter(torch.zeros(bert_config.vocab_size))
        # A plain attribute (not a registered module), so the tied matrix is stored once, under embeddings.
        self.__dict__["word_embeddings"] = word_embeddings
        _register_external_for_zero3(self, word_embeddings.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [.., H] -> [.., vocab]
        return F.linear(self.transform(hidden), self.word_embeddings.weight, self.bias)


class PretrainingHeads(nn.Module):
    """BERT cls: predictions (MLM on text tokens) and seq_relationship (ITM, 2-way, on the pooled output)."""

    def __init__(self, bert_config, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = MLMHead(bert_config, word_embeddings)
        self.seq_relationship = nn.Linear(bert_config.hidden_size, 2)


class VisualWordHead(nn.Module):
    """Visual-word supervision (not in the paper): each video's mean visual token scored against the tied
    embeddings of candidate caption words, logits [B, W].

    Why: without pretrained weights a matching loss only rewards caption-by-video interactions, which start
    near zero (docs/TRAINING.md). Predicting a video's caption words from its visual tokens alone is a
    first-order signal for the CNN, and scoring against the word embeddings puts the visual tokens where
    the transformer already reads words.
    """

    def __init__(self, word_embeddings: nn.Embedding):
        super().__init__()
        # Cosine similarity times a learned scale, as CLIP: the logits do not wait for the word embeddings
        # (std 0.02 at init) to grow. [1]: DeepSpeed cannot broadcast a 0-dim tensor.
        self.scale = nn.Parameter(torch.full((1,), 10.0))
        self.__dict__["word_embeddings"] = word_embeddings  # tied, stored once under embeddings
        _register_external_for_zero3(self, word_embeddings.weight)

    def forward(self, tokens: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, Lv, H], word_ids int64 [W] -> float32 logits [B, W]."""
        self._check_word_ids(word_ids)
        words = F.normalize(F.embedding(word_ids, self.word_embeddings.weight).float(), dim=-1)  # [W, H]
        video = F.normalize(tokens.float().mean((1, 2)), dim=-1)  # [B, H]
        return self.scale.float() * (video @ words.T)

    def _check_word_ids(self, word_ids: torch.Tensor) -> None:
        # torch's errors named neither input: a batched [B, W] gave a matmul shape error, an id past the
        # vocabulary IndexError("index out of range in self")
        if word_ids.dim() != 1 or word_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"word_ids must be int64 vocabulary ids [W], got shape {tuple(word_ids.shape)} and dtype "
                f"{word_ids.dtype}"
            )
        vocab = self.word_embeddings.num_embeddings
        # values only on the CPU: reading them back from an accelerator would synchronize every step
        if word_ids.device.type == "cpu" and not torch.compiler.is_compiling() and word_ids.numel():
            low, high = (int(x) for x in torch.aminmax(word_ids))
            if low < 0 or high >= vocab:
                raise ValueError(
                    f"word_ids must be in [0, vocab_size={vocab}), got values from {low} to {high}"
                )
