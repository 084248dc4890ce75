"""ClipBertConfig: one validated dataclass for the whole model, with the `tiny` and `base` presets."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADS = ("itm", "mc", "qa")
BACKBONE_STYLES = ("torchvision", "msra")
TEMPORAL_FUSIONS = ("mean", "conv3d", "conv2plus1d")
CHANNEL_ORDERS = ("RGB", "BGR")
HIDDEN_ACTS = ("gelu", "relu", "gelu_new")
# How pretrain_forward averages the MLM loss: "masked", BERT's mean over the masked tokens; "original", the
# original release's (run_pretrain.py): its per-position losses over texts padded to max_txt_len, ignored
# positions counting 0, averaged over all of them, i.e. the masked tokens' sum over B x max_text_len.
MLM_LOSS_NORMS = ("masked", "original")

# The keys a checkpoint's weights are tied to. Some set shapes (a mismatch would also fail the load, less
# readably); the others change what the same tensors mean, so a model that disagrees loads without error and
# computes something else: num_heads splits the attention matrices another way, backbone_style moves a
# stride, the pixel statistics and channel order feed the CNN other inputs. Keys a fine-tune may change (the
# head, image size, T, text length, dropout, freezing, checkpointing) are not here.
WEIGHT_KEYS = (
    ("backbone_style", "backbone_layers", "backbone_width", "pixel_mean", "pixel_std", "channel_order")
    + ("temporal_fusion", "max_grid_row", "max_grid_col", "vocab_size", "hidden_size", "num_layers")
    + ("num_heads", "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size")
    + ("layer_norm_eps",)
)

# Pixel values are on the 0..255 scale for both styles: (x - mean) / std per channel, in channel_order.
# torchvision: ImageNet RGB statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) times 255.
TORCHVISION_PIXEL_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_PIXEL_STD = (58.395, 57.12, 57.375)
# MSRA / detectron2 / grid-feat: caffe normalization in BGR order, std 1. The original release subtracts
# (123.675, 116.28, 103.53) from RGB pixels (std 1), then flips to BGR inside the model; this model takes
# frames already in channel_order, so the same numbers appear here in BGR order.
MSRA_PIXEL_MEAN = (103.53, 116.28, 123.675)
MSRA_PIXEL_STD = (1.0, 1.0, 1.0)


@dataclass
class ClipBertConfig:
    # --- task head ---
    head: str = "itm"  # "itm" (K=2, index 1 = match) | "mc" (K=1 per option) | "qa" (K=num_answers)
    num_answers: int = 0  # size of the open-ended QA answer vocabulary; must be > 0 when head == "qa"
    pretrain_heads: bool = True  # build BERT's cls.predictions (MLM, tied) + cls.seq_relationship (ITM)
    visual_words: bool = False  # build the visual-word head (training from scratch; train.visual_word_loss)

    # --- vision backbone (ResNet conv1..conv5, stride 32) ---
    backbone_style: str = "msra"  # "msra": stride in the 1x1 conv (detectron2); "torchvision": in the 3x3
    backbone_layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage res2..res5
    backbone_width: int = 64  # stem channels = res2 bottleneck width; doubles per stage, expansion 4
    frozen_bn: bool = True  # every BatchNorm is a FrozenBatchNorm2d (affine with fixed statistics)
    freeze_at: int = 2  # detectron2 FREEZE_AT: 0 none, 1 stem, 2 stem+res2, ..., 5 stem+res2..res5
    channels_last: bool = False  # run the CNN in torch.channels_last memory format
    checkpoint_cnn: bool = False  # activation checkpointing per trainable CNN stage (with trainable BatchNorm
    #   the recompute updates running statistics a second time; use frozen_bn=True for exact statistics)

    # --- clip / visual tokens ---
    image_size: int = 448  # L: frames are [.., 3, L, L]; L=448 gives a 7x7 grid of visual tokens
    frames_per_clip: int = 1  # T the data pipeline samples per clip (the model accepts any T >= 1)
    temporal_fusion: str = "mean"  # how the T frame grids of a clip become one (Table 2 of the paper)
    max_grid_row: int = 100  # rows of the 2D row position table (original: max_grid_row_position_embeddings)
    max_grid_col: int = 100  # columns of the 2D column position table
    pixel_random_sampling_size: int = 0  # keep this many random visual tokens in train mode; 0 = keep all
    pixel_mean: tuple[float, ...] | None = None  # per channel, 0..255 scale, in channel_order; None = style's
    pixel_std: tuple[float, ...] | None = None  # per channel; None = the style's default
    channel_order: str | None = None  # "RGB" | "BGR" order of the 3 input channels; None = style's

    # --- text + fusion transformer (BERT) ---
    vocab_size: int = 30522  # bundled uncased WordPiece vocabulary
    hidden_size: int = 768  # H
    num_layers: int = 12  # BERT layers
    num_heads: int = 12  # attention heads (hidden_size must divide evenly)
    intermediate_size: int = 3072  # FFN width
    hidden_act: str = "gelu"  # FFN and MLM-transform activation
    max_position_embeddings: int = 512  # text position table size
    type_vocab_size: int = 2  # BERT token type table size
    max_text_len: int = 32  # longest accepted Lt, [CLS]/[SEP] included (the trainer sets it per task)
    hidden_dropout: float = 0.1  # dropout after embeddings, attention output, FFN and before the head
    attention_dropout: float = 0.1  # dropout on attention probabilities
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02  # std of the normal init of linear/embedding weights
    checkpoint_transformer: bool = False  # activation checkpointing per BERT layer

    # --- pre-training losses ---
    mlm_loss_norm: str = "masked"  # MLM_LOSS_NORMS; "original" weighs MLM <= mlm_prob x as much against ITM

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # "False" (a string, so truthy) from a command line is not False
            if isinstance(f.default, bool) and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{f.name} must be true or false, got {getattr(self, f.name)!r}")
        self._check_number_types()
        _check_choice("head", self.head, HEADS)
        _check_choice("backbone_style", self.backbone_style, BACKBONE_STYLES)
        _check_choice("temporal_fusion", self.temporal_fusion, TEMPORAL_FUSIONS)
        _check_choice("hidden_act", self.hidden_act, HIDDEN_ACTS)
        _check_choice("mlm_loss_norm", self.mlm_loss_norm, MLM_LOSS_NORMS)
        self._fill_normalization()
        _check_choice("channel_order", self.channel_order, CHANNEL_ORDERS)
        self._check_numbers()

    def _check_number_types(self) -> None:
        """Counts must be integers and rates numbers, converted to int and float. Why: a string from a JSON
        config or `--set` ("256") failed later with a TypeError that named no key ("not all arguments
        converted during string formatting"), and a float count (pixel_random_sampling_size=100.0) passed
        every check here, then failed in the first training step."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, bool) or not isinstance(f.default, (int, float)):
                continue  # flags are checked above; strings by their choices; tuples below
            if isinstance(f.default, int):
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise ValueError(f"{f.name} must be an integer, got {value!r}")
                setattr(self, f.name, int(value))
            else:
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
                setattr(self, f.name, float(value))
        self.backbone_layers = _int_tuple("backbone_layers", self.backbone_layers)

    def _fill_normalization(self) -> None:
        msra = self.backbone_style == "msra"
        if self.pixel_mean is None:
            self.pixel_mean = MSRA_PIXEL_MEAN if msra else TORCHVISION_PIXEL_MEAN
        if self.pixel_std is None:
            self.pixel_std = MSRA_PIXEL_STD if msra else TORCHVISION_PIXEL_STD
        if self.channel_order is None:
            self.channel_order = "BGR" if msra else "RGB"
        for key in ("pixel_mean", "pixel_std"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value
            ):
                raise ValueError(f"{key} must be a list of 3 numbers (one per channel), got {value!r}")
            value = tuple(float(x) for x in value)
            setattr(self, key, value)
            if len(value) != 3:
                raise ValueError(f"{key} must have 3 values (one per channel), got {value}")
        if not all(math.isfinite(x) for x in self.pixel_mean + self.pixel_std):
            raise ValueError(
                f"pixel_mean and pixel_std must be finite, got {self.pixel_mean} and {self.pixel_std}"
            )
        if min(self.pixel_std) <= 0:
            raise ValueError(f"pixel_std must be > 0, got {self.pixel_std}")

    def _check_numbers(self) -> None:
        if len(self.backbone_layers) != 4 or min(self.backbone_layers) < 1:
            raise ValueError(
                f"backbone_layers must be 4 positive ints (res2..res5), got {self.backbone_layers}"
            )
        positive = (
            ["backbone_width", "image_size", "frames_per_clip", "max_grid_row", "max_grid_col", "vocab_size"]
            + ["hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"]
            + ["type_vocab_size", "max_text_len"]
        )
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(
                f"freeze_at must be in 0..5 (0 none, 1 stem, k stem+res2..res{{k}}), got {self.freeze_at}"
            )
        if self.image_size < 64:
            raise ValueError(
                f"image_size must be >= 64 (stride 32 then a 2x2 max-pool), got {self.image_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.head == "qa" and self.num_answers < 1:
            raise ValueError(f"num_answers must be >= 1 when head == 'qa', got {self.num_answers}")
        if self.pixel_random_sampling_size < 0:
            raise ValueError(
                f"pixel_random_sampling_size must be >= 0, got {self.pixel_random_sampling_size}"
            )
        if self.max_text_len > self.max_position_embeddings:
            raise ValueError(
                f"max_text_len {self.max_text_len} exceeds "
                f"max_position_embeddings {self.max_position_embeddings}"
            )
        for key in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        # written as `not (...)` so that NaN, for which every comparison is false, fails too
        if not 0.0 < self.layer_norm_eps < math.inf:
            raise ValueError(f"layer_norm_eps must be a finite number > 0, got {self.layer_norm_eps}")
        if not 0.0 <= self.initializer_range < math.inf:
            raise ValueError(f"initializer_range must be a finite number >= 0, got {self.initializer_range}")

    # --- derived sizes ---
    @property
    def num_classes(self) -> int:
        """K of score(): 2 for itm, 1 for mc, num_answers for qa."""
        return {"itm": 2, "mc": 1, "qa": self.num_answers}[self.head]

    @property
    def backbone_out_channels(self) -> int:
        return self.backbone_width * 8 * 4  # res5 bottleneck width x expansion

    @property
    def grid_size(self) -> int:
        """Side of the visual token grid for an L x L frame: stride-32 CNN, then a 2x2 max-pool."""
        return _conv_out(self.image_size) // 2

    def weight_key_differences(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(key, saved value, this config's value) for each WEIGHT_KEYS key on which a checkpoint's saved
        config (to_dict of the model that wrote it) disagrees; keys it lacks are not compared."""
        ours = self.to_dict()
        plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 - JSON has no tuples
        return [
            (key, saved[key], ours[key])
            for key in WEIGHT_KEYS
            if key in saved and plain(saved[key]) != plain(ours[key])
        ]

    # --- (de)serialization ---
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["backbone_layers"] = list(self.backbone_layers)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClipBertConfig:
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in allowed:
                raise ValueError(f"unknown ClipBertConfig key {key!r}; allowed keys: {', '.join(allowed)}")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ClipBertConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; allowed presets: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ClipBertConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def bert_config(self):
        """The transformers.BertConfig of the fusion encoder (SDPA attention)."""
        from transformers import BertConfig

        bert = BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            layer_norm_eps=self.layer_norm_eps,
            initializer_range=self.initializer_range,
        )
        bert._attn_implementation = "sdpa"
        return bert


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _int_tuple(key: str, value: Any) -> tuple[int, ...]:
    """A list or tuple of integers, as a tuple. Why: a string ("3463") was read digit by digit."""
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value
    ):
        raise ValueError(f"{key} must be a list of integers, got {value!r}")
    return tuple(int(x) for x in value)


def _conv_out(size: int) -> int:
    """Spatial size after the ResNet's stride-32 path (stem conv, max-pool, three stride-2 stages)."""
    size = (size + 2 * 3 - 7) // 2 + 1  # 7x7 stride-2 stem conv, padding 3
    size = (size + 2 * 1 - 3) // 2 + 1  # 3x3 stride-2 max-pool, padding 1
    for _ in range(3):  # res3, res4, res5 halve it (1x1 stride-2 shortcut)
        size = (size - 1) // 2 + 1
    return size


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model: detectron2 MSRA ResNet-50 (FrozenBN, FREEZE_AT=2, BGR caffe input) + BERT-base.
    "base": dict(
        backbone_style="msra",
        backbone_layers=(3, 4, 6, 3),
        backbone_width=64,
        frozen_bn=True,
        freeze_at=2,
        image_size=448,
        frames_per_clip=1,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        max_text_len=32,
    ),
    # CPU-sized: one bottleneck per stage, width 16 (2048/4 = 512 output channels), trainable BatchNorm
    # because the demo trains it from scratch; 192 px gives a 3x3 grid of visual tokens.
    "tiny": dict(
        backbone_style="torchvision",
        backbone_layers=(1, 1, 1, 1),
        backbone_width=16,
        frozen_bn=False,
        freeze_at=0,
        image_size=192,
        frames_per_clip=1,
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        intermediate_size=512,
        max_text_len=32,
    ),
}
