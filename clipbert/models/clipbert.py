"""ClipBERT (paper Sec. 3, Fig. 2): CNN grid features per clip, fused with the text in one BERT encoder.

Per clip: ResNet (stride 32) -> grid encoder (3x3 conv, 2x2 max-pool, ReLU) -> temporal fusion over T ->
2D position + visual type embeddings, LayerNorm -> Lv visual tokens. Per (text, clip) pair: the sequence
[CLS] text [SEP] + visual tokens goes through BERT; BERT's pooler output feeds the task head. score()
returns per-clip logits [B, M, N, K]; the trainer aggregates clips (clipbert.ops.clip_aggregate).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder, BertPooler

from clipbert.models.config import ClipBertConfig
from clipbert.models.embeddings import VisualEmbeddings
from clipbert.models.grid_encoder import GridEncoder
from clipbert.models.heads import ClassifierHead, PretrainingHeads, VisualWordHead
from clipbert.models.resnet import ResNetBackbone
from clipbert.models.temporal import TemporalFusion

logger = logging.getLogger(__name__)

CONFIG_NAME = "clipbert_config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class VisualTokens:
    tokens: torch.Tensor  # [B, N, Lv, H] after 2D position + type embeddings and LayerNorm


class VisualEncoder(nn.Module):
    """frames [B*N, T, 3, L, L] -> clip grids [B*N, H, h, w] (the original's `cnn`)."""

    def __init__(self, cfg: ClipBertConfig):
        super().__init__()
        self.backbone = ResNetBackbone(
            layers=cfg.backbone_layers,
            width=cfg.backbone_width,
            style=cfg.backbone_style,
            frozen_bn=cfg.frozen_bn,
            freeze_at=cfg.freeze_at,
            checkpoint_stages=cfg.checkpoint_cnn,
        )
        self.grid_encoder = GridEncoder(self.backbone.out_channels, cfg.hidden_size)
        self.temporal = TemporalFusion(cfg.temporal_fusion, cfg.hidden_size)
        self.channels_last = cfg.channels_last

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        clips, t = frames.shape[:2]
        x = frames.reshape(clips * t, *frames.shape[2:])  # [B*N*T, 3, L, L]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grid = self.grid_encoder(self.backbone(x))  # [B*N*T, H, h, w]
        grid = grid.reshape(clips, t, *grid.shape[1:])  # [B*N, T, H, h, w]
        return self.temporal(grid)  # [B*N, H, h, w]


class ClipBert(nn.Module):
    def __init__(self, cfg: ClipBertConfig):
        super().__init__()
        self.config = cfg
        bert_cfg = cfg.bert_config()
        self.cnn = VisualEncoder(cfg)
        self.visual_embeddings = VisualEmbeddings(
            cfg.hidden_size,
            cfg.max_grid_row,
            cfg.max_grid_col,
            cfg.layer_norm_eps,
            cfg.hidden_dropout,
            cfg.pixel_random_sampling_size,
        )
        self.embeddings = BertEmbeddings(bert_cfg)
        self.encoder = BertEncoder(bert_cfg)
        self.pooler = BertPooler(bert_cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.classifier = ClassifierHead(cfg.hidden_size, cfg.num_classes)
        self.cls = PretrainingHeads(bert_cfg, self.embeddings.word_embeddings) if cfg.pretrain_heads else None
        self.visual_words = VisualWordHead(self.embeddings.word_embeddings) if cfg.visual_words else None
        for module in (self.visual_embeddings, self.embeddings, self.encoder, self.pooler, self.classifier):
            module.apply(self._init_bert_weights)
        if self.cls is not None:
            self.cls.apply(self._init_bert_weights)
            nn.init.zeros_(self.cls.predictions.bias)

    def _init_bert_weights(self, module: nn.Module) -> None:
        # BERT's init: N(0, 0.02) weights, zero biases, unit LayerNorm.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])  # [PAD] starts at zero, as in BERT
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ visual side
    def encode_visual(self, frames: torch.Tensor) -> VisualTokens:
        """frames [B, N, T, 3, L, L] (normalized per cfg.pixel_mean/std, cfg.channel_order) -> tokens."""
        self._check_frames(frames)
        b, n = frames.shape[:2]
        cnn = self.__dict__.get("_compiled_cnn", self.cnn)  # compile_cnn() put it there
        grid = cnn(frames.reshape(b * n, *frames.shape[2:]))  # [B*N, H, h, w]
        tokens = self.visual_embeddings(grid)  # [B*N, Lv, H]
        return VisualTokens(tokens.reshape(b, n, *tokens.shape[1:]))

    def compile_cnn(self, **compile_kwargs) -> None:
        """Run the CNN through torch.compile from now on. The compiled wrapper is kept outside the module
        tree, so state_dict keys, checkpoints and DeepSpeed's parameter handling are unchanged."""
        self.__dict__["_compiled_cnn"] = torch.compile(self.cnn, **compile_kwargs)

    def compile_full(self, **compile_kwargs) -> None:
        """Run every call of the model (`model(...)`: CNN, transformer and heads) through torch.compile from
        now on (nn.Module.compile: in place, state_dict keys unchanged). Methods called directly, such as
        evaluation's encode_visual and score, stay eager, so evaluation's shapes do not recompile."""
        self.compile(**compile_kwargs)

    def _check_frames(self, frames: torch.Tensor) -> None:
        expected = f"[B, N, T, 3, L, L] (e.g. L={self.config.image_size})"
        shape = tuple(frames.shape)
        if frames.dim() != 6 or shape[3] != 3 or shape[4] != shape[5]:
            raise ValueError(f"frames must have shape {expected}, got {shape}")
        if min(shape[:3]) < 1 or shape[4] < 64:
            raise ValueError(f"frames must have shape {expected} with B, N, T >= 1 and L >= 64, got {shape}")
        if not frames.is_floating_point():
            raise ValueError(f"frames must be a normalized float tensor, got dtype {frames.dtype}")
        # The CNN's first weight: the backbone's, or the grid encoder's when clipbert.perf.frozen_fuse left a
        # wholly frozen backbone (freeze_at=5) without parameters (next() raised a bare StopIteration).
        weight = next(self.cnn.parameters())
        if weight.numel() and frames.device != weight.device:  # numel 0: a ZeRO-3 placeholder, skipped
            raise ValueError(f"frames are on {frames.device} but the model is on {weight.device}")
        # The first convolution needs the weights' dtype unless autocast casts the frames (it leaves float64
        # alone); torch's own error ("expected scalar type Half but found Float") named neither the frames
        # nor the dtype to cast them to.
        if frames.dtype != weight.dtype and not _autocast_casts(frames):
            raise ValueError(
                f"frames have dtype {frames.dtype} but the model's weights are {weight.dtype}: cast the "
                f"frames (frames.to({weight.dtype})) or run the model under torch.autocast"
            )

    # ------------------------------------------------------------------ fusion
    def score(
        self, visual: VisualTokens, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """visual.tokens [B, N, Lv, H], input_ids/attention_mask [B, M, Lt] -> logits [B, M, N, K].

        Every (text m, clip n) pair of a video is one BERT sequence; the clip's visual tokens are computed
        once (encode_visual) and broadcast over the M texts. attention_mask=None means no text is padded:
        attention then runs without a mask, which lets SDPA choose flash attention on a GPU.
        """
        self._check_text(visual, input_ids, attention_mask)
        pooled, _ = self._fuse(visual.tokens, input_ids, attention_mask)  # [B*M*N, H]
        logits = self.classifier(self.dropout(pooled))  # [B*M*N, K]
        b, m = input_ids.shape[:2]
        return logits.view(b, m, visual.tokens.shape[1], -1)

    def forward(
        self,
        frames: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        word_ids: torch.Tensor | None = None,
    ):
        """logits [B, M, N, K]; with word_ids [W] also the visual-word logits [B, W] (a pair).

        input_ids=None skips the transformer: (None, word logits), the CNN-only warm-up of
        train.visual_word_steps.
        """
        visual = self.encode_visual(frames)
        scores = None if input_ids is None else self.score(visual, input_ids, attention_mask)
        if word_ids is None:
            if scores is None:
                raise ValueError("forward needs input_ids, word_ids or both")
            return scores
        if self.visual_words is None:
            raise ValueError("word_ids needs the visual-word head: build the model with visual_words=True")
        return scores, self.visual_words(visual.tokens, word_ids)

    def _check_text(
        self, visual: VisualTokens, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> None:
        limit = self.config.max_text_len
        if input_ids.dim() != 3 or input_ids.shape[-1] > limit:
            raise ValueError(
                f"input_ids must have shape [B, M, Lt] with Lt <= {limit}, got {tuple(input_ids.shape)}"
            )
        # Lt=0 passed silently: the pooler read the first visual token instead of [CLS]; M=0 failed in a
        # reshape deep in the attention.
        if min(input_ids.shape[1:]) < 1:
            raise ValueError(
                "input_ids must have shape [B, M, Lt] with M >= 1 texts and Lt >= 1 tokens ([CLS] first), "
                f"got {tuple(input_ids.shape)}"
            )
        if input_ids.dtype not in (torch.int64, torch.int32):  # what the embedding lookup takes
            raise ValueError(f"input_ids must be int64 (or int32) token ids, got dtype {input_ids.dtype}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        tokens = visual.tokens
        if (
            tokens.dim() != 4
            or tokens.shape[0] != input_ids.shape[0]
            or tokens.shape[-1] != self.config.hidden_size
        ):
            raise ValueError(
                f"visual.tokens must have shape [B={input_ids.shape[0]}, N, Lv, H={self.config.hidden_size}],"
                f" got {tuple(tokens.shape)}"
            )
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if tensor is not None and tensor.device != tokens.device:
                raise ValueError(
                    f"{name} is on {tensor.device} but the visual tokens (frames) are on {tokens.device}: "
                    "move the inputs to one device"
                )
        # Reading values back from an accelerator would synchronize every step, and compiled graphs cannot
        # branch on them: the value checks run on CPU tensors (prediction, tests, CPU training) only.
        if input_ids.device.type == "cpu" and not torch.compiler.is_compiling():
            self._check_text_values(input_ids, attention_mask)

    def _check_text_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        vocab = self.config.vocab_size
        low, high = (int(x) for x in torch.aminmax(input_ids))
        if low < 0 or high >= vocab:
            # torch raised IndexError("index out of range in self"): it named neither input nor vocabulary
            raise ValueError(
                f"input_ids must be token ids in [0, vocab_size={vocab}), got values from {low} to {high}: "
                "were the texts tokenized with another vocabulary than the model's?"
            )
        if attention_mask is None:
            return
        first_masked = ~attention_mask[..., 0].bool()  # [B, M]
        if first_masked.any():
            # The pooler reads the first position ([CLS]); a masked one there meant a left-padded or empty
            # text, and the scores silently came from a [PAD] token.
            rows = first_masked.nonzero().tolist()[:5]
            raise ValueError(
                "attention_mask masks the first token of some texts ([b, m] = "
                f"{', '.join(map(str, rows))}): texts must start with [CLS] and be right-padded, and the "
                "mask is 1 (or True) where a token is attended, 0 at padding"
            )

    def _fuse(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """visual [B, N, Lv, H], ids/mask [B, M, Lt] -> pooled [B*M*N, H], sequence [B*M*N, Lt+Lv, H]."""
        b, n, lv, h = visual.shape
        m, lt = input_ids.shape[1:]
        text = self.embeddings(input_ids=input_ids.reshape(b * m, lt)).view(b, m, 1, lt, h)
        text = text.expand(b, m, n, lt, h)
        vis = visual.unsqueeze(1).expand(b, m, n, lv, h)
        seq = torch.cat([text, vis.to(text.dtype)], dim=3).reshape(b * m * n, lt + lv, h)
        mask = None  # every token attends: no mask at all, so SDPA may use flash attention
        if attention_mask is not None:
            text_mask = attention_mask.reshape(b, m, 1, lt).expand(b, m, n, lt).reshape(b * m * n, lt)
            mask = torch.cat([text_mask.bool(), text_mask.new_ones(b * m * n, lv, dtype=torch.bool)], dim=1)
        hidden = self._encode(seq, mask)  # [B*M*N, S, H]
        return self.pooler(hidden), hidden

    def _encode(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """BERT layers over [S_batch, S, H] with key mask [S_batch, S] (True = attend; None: all attend)."""
        if mask is None:
            attn_mask = None
        elif self.encoder.config._attn_implementation == "sdpa":
            attn_mask = mask[:, None, None, :]  # [Sb, 1, 1, S] bool, broadcast over heads and queries
        else:  # eager attention adds the mask
            attn_mask = (~mask[:, None, None, :]).to(hidden.dtype) * torch.finfo(hidden.dtype).min
        use_ckpt = self.config.checkpoint_transformer and self.training and torch.is_grad_enabled()
        for layer in self.encoder.layer:
            if use_ckpt:
                hidden = checkpoint(layer, hidden, attn_mask, use_reentrant=False)
            else:
                hidden = layer(hidden, attn_mask)
        return hidden

    # ------------------------------------------------------------------ pre-training
    def pretrain_forward(
        self,
        frames: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_labels: torch.Tensor,
        itm_labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """frames [B, 1, 1, 3, L, L], ids/mask/mlm_labels [B, 1, Lt] (-100 = ignore), itm_labels [B].

        MLM (BERT cls.predictions, tied) on the text positions only, ITM (cls.seq_relationship) on the pooled
        output; loss = mlm_loss + itm_loss. itm_loss is the mean over the B examples, mlm_loss the mean over
        the masked tokens, or with config.mlm_loss_norm="original" their sum over B x max_text_len.
        """
        if self.cls is None:
            raise ValueError("pretrain_forward needs pretrain_heads=True in ClipBertConfig")
        if frames.dim() != 6 or frames.shape[1] != 1 or input_ids.dim() != 3 or input_ids.shape[1] != 1:
            raise ValueError(
                "pretrain_forward expects frames [B, 1, T, 3, L, L] and input_ids [B, 1, Lt], "
                f"got {tuple(frames.shape)} and {tuple(input_ids.shape)}"
            )
        if mlm_labels.shape != input_ids.shape or itm_labels.shape != input_ids.shape[:1]:
            raise ValueError(
                f"mlm_labels must be {tuple(input_ids.shape)} and itm_labels [{input_ids.shape[0]}], "
                f"got {tuple(mlm_labels.shape)} and {tuple(itm_labels.shape)}"
            )
        if mlm_labels.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_labels("mlm_labels", mlm_labels, self.config.vocab_size, ignore=-100)
            _check_labels("itm_labels", itm_labels, 2)
        visual = self.encode_visual(frames)
        self._check_text(visual, input_ids, attention_mask)
        pooled, hidden = self._fuse(visual.tokens, input_ids, attention_mask)
        lt = input_ids.shape[-1]
        mlm_logits = self.cls.predictions(hidden[:, :lt])  # [B, Lt, vocab]: text part only
        itm_logits = self.cls.seq_relationship(pooled)  # [B, 2]
        mlm_loss = self._mlm_loss(mlm_logits, mlm_labels.reshape(-1, lt))
        itm_loss = F.cross_entropy(itm_logits.float(), itm_labels)
        return dict(
            loss=mlm_loss + itm_loss,
            mlm_loss=mlm_loss,
            itm_loss=itm_loss,
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
        )

    def _mlm_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits [B, Lt, vocab], labels [B, Lt] (-100 = ignore) -> the MLM loss (config.mlm_loss_norm)."""
        if self.config.mlm_loss_norm == "original":
            # The original's CrossEntropyLoss(reduction="none").mean() over its texts, padded to max_txt_len:
            # every position counts in the mean, an ignored one as 0. Ours pad to the batch's longest text,
            # so the divisor is max_text_len (what the trainer sets from data.max_text_len), not Lt.
            total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum")
            return total / (labels.shape[0] * self.config.max_text_len)
        if (labels != -100).any():
            return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        # no masked token in the batch: a zero that still depends on the graph
        return logits.float().sum() * 0.0

    def pretrain_scores(
        self,
        visual: VisualTokens,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        mlm: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The pre-training heads on every (text, clip) pair, for inference: visual.tokens [B, N, Lv, H],
        input_ids/attention_mask [B, M, Lt] -> itm_logits [B, M, N, 2] (cls.seq_relationship, label 1 =
        match) and, with mlm, mlm_logits [B, M, N, Lt, vocab] of the text positions (cls.predictions).

        Why not score(): a pre-trained model's matching head is cls.seq_relationship, which pretrain_forward
        trains; `classifier` is the fine-tuning head, untrained until a downstream task starts from here."""
        if self.cls is None:
            raise ValueError("pretrain_scores needs pretrain_heads=True in ClipBertConfig")
        self._check_text(visual, input_ids, attention_mask)
        pooled, hidden = self._fuse(visual.tokens, input_ids, attention_mask)  # [B*M*N, H], [B*M*N, S, H]
        (b, m, lt), n = input_ids.shape, visual.tokens.shape[1]
        out = {"itm_logits": self.cls.seq_relationship(pooled).view(b, m, n, 2)}
        if mlm:
            out["mlm_logits"] = self.cls.predictions(hidden[:, :lt]).view(b, m, n, lt, -1)
        return out

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path) -> None:
        """Writes clipbert_config.json and model.safetensors (tied MLM weights stored once)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "clipbert": "1"})

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> ClipBert:
        """Builds the model from clipbert_config.json (+ overrides) and loads model.safetensors strictly."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} not found (expected a ClipBert.save_pretrained dir)"
                )
        values = _read_config(directory / CONFIG_NAME)
        cfg = ClipBertConfig.from_dict({**values, **overrides})
        # Some of these keys load without a shape error and compute something else (num_heads splits the
        # attention another way, backbone_style moves a stride): refuse them, as the trainer does.
        changed = cfg.weight_key_differences(values)
        if changed:
            shown = "; ".join(f"{key}: saved {saved!r}, override {ours!r}" for key, saved, ours in changed)
            raise ValueError(
                f"{directory}: the overrides change settings the saved weights are tied to ({shown}); "
                "drop those overrides"
            )
        model = cls(cfg)
        try:
            state = load_file(str(directory / WEIGHTS_NAME))
        except SafetensorError as err:  # its message named no file ("incomplete metadata, file not ...")
            raise ValueError(
                f"{directory / WEIGHTS_NAME}: unreadable ({err}); was the copy cut short?"
            ) from err
        model.load_state_dict(state, strict=True)
        return model


def _read_config(path: Path) -> dict:
    """The saved config's keys. Why: a cut file raised a bare JSONDecodeError, a list a TypeError from
    deep in from_dict, neither naming the file."""
    try:
        values = json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({err}); was the copy cut short?") from err
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: expected a JSON object of ClipBertConfig keys, got {type(values).__name__}"
        )
    return values


def _autocast_casts(frames: torch.Tensor) -> bool:
    """Whether autocast is on for the frames' device and casts them (it leaves float64 alone)."""
    if frames.dtype == torch.float64 or frames.device.type == "meta":  # meta: autocast knows no such device
        return False
    return torch.is_autocast_enabled(frames.device.type)


def _check_labels(name: str, labels: torch.Tensor, classes: int, ignore: int | None = None) -> None:
    """Integer class labels in [0, classes) (or `ignore`). Why: cross_entropy raised IndexError("Target 2 is
    out of bounds"), naming neither the labels nor the class count."""
    if labels.dtype != torch.int64:  # what cross_entropy takes (int32 failed there too)
        raise ValueError(f"{name} must be int64 class indices, got dtype {labels.dtype}")
    valid = labels if ignore is None else labels[labels != ignore]
    if valid.numel() and (valid.min() < 0 or valid.max() >= classes):
        allowed = f"[0, {classes})" + ("" if ignore is None else f" or {ignore} (ignored)")
        raise ValueError(
            f"{name} must be in {allowed}, got values from {int(valid.min())} to {int(valid.max())}"
        )
