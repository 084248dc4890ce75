"""Weight loading: Hugging Face BERT dirs, torchvision / detectron2 ResNets, original ClipBERT checkpoints.

Every loader returns a LoadReport (loaded, missing, unexpected, ignored keys) and logs what did not land.
Shapes must match exactly; a mismatch raises ValueError naming the key and both shapes.

Original ClipBERT checkpoint names (jayleicn/ClipBERT, src/modeling/{e2e_model,grid_feat,modeling}.py):
  cnn.feature.backbone.{stem,res2..res5}.*      detectron2 ResNet-50 (build_model(...).backbone)
  cnn.feature.{proposal_generator,roi_heads}.*  detector heads ClipBERT never runs (ignored)
  cnn.feature.pixel_{mean,std}                  detectron2 normalization buffers (ignored; see config)
  cnn.grid_encoder.0.weight                     3x3 conv 2048 -> H, no bias
  transformer.bert.embeddings.*                 BERT word/position/type embeddings + LayerNorm
  transformer.bert.visual_embeddings.*          row/col position, token type (1, H), LayerNorm;
                                                its `position_embeddings` table is unused (ignored)
  transformer.bert.encoder.*, .bert.pooler.*    BERT encoder and pooler
  transformer.classifier.{0,2}.*                fine-tuned task head MLP
  transformer.cls.predictions.*, .cls.seq_relationship.*   pre-training heads (decoder tied: ignored)
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from clipbert.models.config import ClipBertConfig

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # target names that received a tensor
    missing: list[str] = field(default_factory=list)  # target names in scope that received nothing
    unexpected: list[str] = field(default_factory=list)  # source names with no place in the model
    ignored: list[str] = field(default_factory=list)  # source names deliberately dropped (unused/tied)

    def log(self, what: str) -> None:
        logger.info("%s: loaded %d tensors", what, len(self.loaded))
        if self.missing:
            logger.warning("%s: %d missing keys: %s", what, len(self.missing), self.missing)
        if self.unexpected:
            logger.warning("%s: %d unexpected keys: %s", what, len(self.unexpected), self.unexpected)
        if self.ignored:
            logger.info("%s: %d ignored keys: %s", what, len(self.ignored), self.ignored)


# ---------------------------------------------------------------------------------------------- helpers
def read_state_dict(source: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """A state dict from a mapping, a .safetensors file, a torch file, a plain pickle (detectron2's .pkl),
    or a HF-style directory (one file, or shards listed by model.safetensors.index.json or
    pytorch_model.bin.index.json).

    Unwraps {"model": ...} / {"state_dict": ...} / {"module": ...} / {"blobs": ...} containers (detectron2,
    trainers, DeepSpeed, Detectron1) and numpy values.
    """
    if isinstance(source, Mapping):
        state = source
    else:
        path = Path(source)
        if path.is_dir():
            # sharded checkpoints (save_pretrained past max_shard_size, every large hub model) have no single
            # weights file, only an index that maps each tensor to its shard
            names = ("model.safetensors", "model.safetensors.index.json")
            candidates = [path / n for n in names + ("pytorch_model.bin", "pytorch_model.bin.index.json")]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise FileNotFoundError(
                    f"{path} holds neither model.safetensors nor pytorch_model.bin (nor a sharded index)"
                )
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        if path.name.endswith(".index.json"):
            state = _read_sharded(path)
        elif path.suffix == ".safetensors":
            state = _load_safetensors(path)
        else:
            state = _load_torch_or_pickle(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} holds a {type(state).__name__}, not a state dict (a mapping of names)")
    # "module": DeepSpeed's mp_rank_00_model_states.pt; "blobs": Detectron1 / caffe2 model-zoo pickles;
    # "model_state_dict": the original ClipBERT trainer's restore.pt (E2E_TrainingRestorer). Without them such
    # a file read as an empty state dict: BERT loaded nothing, with only a warning.
    for wrapper in ("model", "state_dict", "module", "blobs", "model_state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    tensors = {k: torch.as_tensor(v) for k, v in state.items() if hasattr(v, "shape")}
    if not tensors:
        where = "state dict" if isinstance(source, Mapping) else str(source)
        raise ValueError(f"{where} holds no tensors (top-level keys: {list(state)[:8]})")
    return tensors


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:  # truncated or empty file: the bare error names no file
        raise ValueError(f"cannot read {path}: not a complete safetensors file ({err})") from err


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    """A sharded HF checkpoint: every shard its index's weight_map names, merged."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"cannot read {index}: not a sharded-checkpoint index ({err!r})") from err
    state: dict[str, torch.Tensor] = {}
    for name in shards:
        shard = index.parent / name
        if not shard.is_file():
            raise FileNotFoundError(f"{index} names shard {name}, which is not in {index.parent}")
        part = _load_safetensors(shard) if shard.suffix == ".safetensors" else _load_torch_or_pickle(shard)
        state.update(part)
    return state


def _load_torch_or_pickle(path: Path):
    """torch.save's format, else a plain pickle. Why: detectron2's model-zoo .pkl files ({"model": {name:
    numpy array}, "__author__": ...}) are plain pickles, which torch.load rejects ("Invalid magic number").

    Both are read without running code from the file: torch.load with weights_only (tensors, dicts, lists,
    numbers), and a pickle through `_ArraysOnly` (numpy arrays and plain containers). Why: weights are
    downloaded files, and a full unpickler runs whatever a file names, so a doctored checkpoint ran code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as torch_err:
        try:
            with open(path, "rb") as f:
                return _ArraysOnly(f, encoding="latin1").load()  # latin1: detectron2's Python 2 era pickles
        except Exception as pickle_err:  # any unpickling failure: report both readers' reasons
            first = (str(torch_err).strip().splitlines() or [""])[0].split(". ")[0]  # torch's runs to a page
            raise ValueError(
                f"cannot read {path}: not a torch checkpoint of tensors ({first}) nor a pickle of arrays "
                f"({pickle_err})"
            ) from pickle_err


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and refuses every other class or call."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3: str -> bytes, nothing more
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a file of weights does not need")


def _strip_prefix(state: dict[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    """Drop each prefix that every key shares, repeatedly: "module.model.backbone.conv1.weight" (DDP around a
    Lightning module around a backbone) -> "conv1.weight"."""
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


# Containers whose prefix every key of a saved model carries: DataParallel/DDP/DeepSpeed ("module."),
# Lightning modules that hold the network as self.model ("model."). Only "module." was stripped: a Lightning
# BERT checkpoint then loaded nothing (every key unexpected, only a warning).
WRAPPER_PREFIXES = ("module.", "model.")


def _rename_legacy_norm(key: str) -> str:
    # TF-converted BERT checkpoints name LayerNorm parameters gamma/beta.
    return re.sub(
        r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    )


def assign(
    model: nn.Module, mapped: dict[str, torch.Tensor], scope: tuple[str, ...], report: LoadReport
) -> LoadReport:
    """Copy `mapped` (model-named tensors) into `model`; names under `scope` that got nothing are missing."""
    target = model.state_dict()
    with torch.no_grad():
        for key, value in mapped.items():
            if key not in target:
                # BatchNorm's step counter: a FrozenBatchNorm2d has none and a BatchNorm reads none in
                # training with momentum (torchvision's 53 of them drowned real unexpected keys)
                if not key.endswith("num_batches_tracked"):
                    report.unexpected.append(key)
                continue
            if tuple(target[key].shape) != tuple(value.shape):
                raise ValueError(
                    f"shape mismatch for {key}: model has {tuple(target[key].shape)}, "
                    f"checkpoint {tuple(value.shape)}"
                )
            target[key].copy_(value)
            report.loaded.append(key)
    loaded = set(report.loaded)
    report.missing.extend(
        k for k in target if k.startswith(scope) and k not in loaded and not k.endswith("num_batches_tracked")
    )
    return report


# ------------------------------------------------------------------------------------------------- BERT
def config_from_hf_bert(directory: str | Path, preset: str = "base", **overrides) -> ClipBertConfig:
    """A ClipBertConfig whose transformer sizes match the HF BERT checkpoint in `directory`."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected a Hugging Face BERT checkpoint directory)")
    hf = json.loads(path.read_text())
    sizes = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        hidden_act=hf.get("hidden_act", "gelu"),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
    )
    return ClipBertConfig.from_preset(preset, **{**sizes, **overrides})


def load_hf_bert(model: nn.Module, source: str | Path | Mapping) -> LoadReport:
    """Load a Hugging Face BERT checkpoint (dir, file or state dict) into embeddings, encoder, pooler
    (and BERT's cls pre-training heads when the checkpoint has them and the model was built with them)."""
    state = _strip_prefix(read_state_dict(source), *WRAPPER_PREFIXES)
    report = LoadReport()
    mapped: dict[str, torch.Tensor] = {}
    has_cls = getattr(model, "cls", None) is not None
    for key, value in state.items():
        name = _rename_legacy_norm(key.removeprefix("bert."))
        if name.endswith("position_ids") or name.startswith("cls.predictions.decoder."):
            report.ignored.append(key)  # buffer / tied to word embeddings
        elif name.startswith(("embeddings.", "encoder.", "pooler.")) or (has_cls and name.startswith("cls.")):
            mapped[name] = value
        else:
            report.unexpected.append(key)
    where = source if not isinstance(source, Mapping) else "state dict"
    if not mapped:  # a foreign file left the transformer random with only a warning
        raise ValueError(
            f"{where}: no BERT tensor (embeddings.*, encoder.*, pooler.*, with or without 'bert.'); "
            f"first keys: {list(state)[:5]}"
        )
    ours, theirs = _num_layers(model.state_dict()), _num_layers(mapped)
    if ours > theirs:  # the model's extra layers would stay random with only a "missing keys" warning
        raise ValueError(
            f"{where}: the checkpoint has {theirs} encoder layers, the model {ours}: set model.num_layers "
            f"<= {theirs} (the first layers are kept) or use the checkpoint's config.json"
        )
    scope = ("embeddings.", "encoder.", "pooler.")
    if has_cls and any(k.startswith("cls.") for k in mapped):
        scope += ("cls.",)
    assign(model, mapped, scope, report)
    report.log(f"BERT weights from {where}")
    return report


def _num_layers(state: Mapping) -> int:
    indices = [int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))]
    return max(indices, default=-1) + 1


# ----------------------------------------------------------------------------------------------- ResNet
_D2_NORM = re.compile(r"^(res[2-5]\.\d+)\.(conv[123]|shortcut)\.norm\.(.+)$")
_D2_CONV = re.compile(r"^(res[2-5]\.\d+)\.(conv[123]|shortcut)\.weight$")


def detectron2_to_torchvision(key: str) -> str | None:
    """Map one detectron2 ResNet name (stem.conv1.*, resK.i.{conv1..3,shortcut}[.norm].*) to ours."""
    if key == "stem.conv1.weight":
        return "conv1.weight"
    if key.startswith("stem.conv1.norm."):
        return "bn1." + key.removeprefix("stem.conv1.norm.")
    for pattern, is_norm in ((_D2_NORM, True), (_D2_CONV, False)):
        match = pattern.match(key)
        if match is None:
            continue
        block, conv = match.group(1), match.group(2)
        stage, index = block.split(".")
        layer = f"layer{int(stage[3]) - 1}.{index}"
        if conv == "shortcut":
            return f"{layer}.downsample.{1 if is_norm else 0}." + (match.group(3) if is_norm else "weight")
        return f"{layer}.{conv.replace('conv', 'bn') if is_norm else conv}." + (
            match.group(3) if is_norm else "weight"
        )
    return None


_C2_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b|bn_rm|bn_riv)$")
_C2_SUFFIX = {"w": "weight", "bn_s": "norm.weight", "bn_b": "norm.bias"}
_C2_SUFFIX.update(bn_rm="norm.running_mean", bn_riv="norm.running_var")
_C2_CONV = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}


def caffe2_to_detectron2(key: str) -> str | None:
    """Map one caffe2 / Detectron1 ResNet name (conv1_w, res_conv1_bn_s, res2_0_branch2a_w, ...) to
    detectron2's, as detectron2's convert_basic_c2_names does; None for others (fc1000_*, *_momentum)."""
    stem = {"conv1_w": "weight", "res_conv1_bn_s": "norm.weight", "res_conv1_bn_b": "norm.bias"}
    if key in stem:
        return "stem.conv1." + stem[key]
    match = _C2_BLOCK.match(key)
    if match is None:
        return None
    stage, index, branch, suffix = match.groups()
    return f"res{stage}.{index}.{_C2_CONV[branch]}.{_C2_SUFFIX[suffix]}"


def _caffe2_state_to_detectron2(
    state: dict[str, torch.Tensor], report: LoadReport
) -> dict[str, torch.Tensor]:
    """detectron2 names for a caffe2 model-zoo ResNet (detectron2's ImageNetPretrained/MSRA/R-50.pkl).

    Its norms are AffineChannel (scale and bias, no statistics): they get running mean 0 and variance 1, as
    detectron2's FrozenBatchNorm2d fills them when it loads such a file.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = caffe2_to_detectron2(key)
        if name is None:
            report.ignored.append(key)  # ImageNet classifier (fc1000_*), solver state (*_momentum)
        else:
            out[name] = value
    for key in [k for k in out if k.endswith(".norm.weight")]:
        norm = key.removesuffix("weight")
        out.setdefault(norm + "running_mean", torch.zeros_like(out[key]))
        out.setdefault(norm + "running_var", torch.ones_like(out[key]))
    return out


def _detect_resnet_format(state: dict[str, torch.Tensor]) -> str:
    if any(k.endswith("stem.conv1.weight") for k in state):
        return "detectron2"
    # caffe2 / Detectron1 names: detectron2's own ImageNet R-50.pkl uses them; they were "unrecognized"
    if "conv1_w" in state or any(_C2_BLOCK.match(k) for k in state):
        return "caffe2"
    if "conv1.weight" in state or any(k.startswith("layer1.") for k in state):
        return "torchvision"
    raise ValueError(
        "unrecognized ResNet checkpoint: expected torchvision names (conv1.weight, layer1.0.conv1.weight), "
        "detectron2 names (stem.conv1.weight, res2.0.conv1.weight) or caffe2 names (conv1_w, "
        f"res2_0_branch2a_w); first keys: {list(state)[:5]}"
    )


def _blocks_per_stage(state: Mapping, prefix: str) -> dict[int, int]:
    """{stage 1..4: blocks} of torchvision-named keys under prefix."""
    blocks: dict[int, int] = {}
    for key in state:
        match = re.match(re.escape(prefix) + r"layer([1-4])\.(\d+)\.", key)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), index + 1)
    return blocks


def _check_depth(model: nn.Module, mapped: dict[str, torch.Tensor], prefix: str) -> None:
    """A ResNet of another depth is an error. Why: a ResNet-101 state dict holds every ResNet-50 name with the
    same shapes plus 17 more res4 blocks, so it loaded "successfully" (a truncated ResNet-101, the extra
    blocks only logged as unexpected), and a ResNet-50 into a ResNet-101 model left 17 blocks random."""
    ours, theirs = _blocks_per_stage(model.state_dict(), prefix), _blocks_per_stage(mapped, prefix)
    convs = {k.rsplit(".", 2)[-2] for k in mapped if k.endswith(("conv2.weight", "conv3.weight"))}
    basic = convs == {"conv2"}  # ResNet-18/34's 2-conv blocks; ResNet-34 has ResNet-50's block counts
    if basic or any(theirs.get(stage, blocks) != blocks for stage, blocks in ours.items()):
        raise ValueError(
            f"the checkpoint's ResNet has {tuple(theirs.get(i, 0) for i in (1, 2, 3, 4))} blocks per stage"
            f"{' (basic blocks: a ResNet-18/34)' if basic else ''}, the model "
            f"{tuple(ours[i] for i in sorted(ours))} bottlenecks (model.backbone_layers; ResNet-50 is "
            "(3, 4, 6, 3), ResNet-101 (3, 4, 23, 3)): use a checkpoint of the model's depth"
        )


def _warn_if_not_msra(model: nn.Module) -> None:
    from clipbert.models.resnet import ResNetBackbone

    for module in model.modules():
        if isinstance(module, ResNetBackbone) and module.style != "msra":
            logger.warning(
                "detectron2/original weights are MSRA style (stride in the 1x1 conv) but the backbone is "
                "%r style: outputs will differ from the original; build it with backbone_style='msra'",
                module.style,
            )


def load_resnet(model: nn.Module, source: str | Path | Mapping, prefix: str = "cnn.backbone.") -> LoadReport:
    """Load a torchvision or detectron2/grid-feat ResNet state dict into `model` (a ClipBert: prefix
    'cnn.backbone.'; a bare ResNetBackbone: prefix ''). detectron2 names may carry 'backbone.bottom_up.' or
    'backbone.' prefixes; caffe2 / Detectron1 names (res2_0_branch2a_w) are converted to detectron2's. The fc
    layer and detector heads are ignored; a ResNet of another depth than the model's is an error."""
    state = _strip_prefix(read_state_dict(source), *WRAPPER_PREFIXES)
    bare = _strip_prefix(state, "backbone.")
    if "conv1.weight" in bare:  # torchvision names of a trainer's self.backbone (detectron2's: handled below)
        state = bare
    report = LoadReport()
    mapped: dict[str, torch.Tensor] = {}
    style = _detect_resnet_format(state)
    if style == "caffe2":
        state, style = _caffe2_state_to_detectron2(state, report), "detectron2"
    if style == "torchvision":
        for key, value in state.items():
            if key.startswith("fc."):
                report.ignored.append(key)  # ImageNet classifier
            else:
                mapped[prefix + key] = value
    else:
        _warn_if_not_msra(model)
        for key, value in state.items():
            name = key.removeprefix("backbone.").removeprefix("bottom_up.")
            target = detectron2_to_torchvision(name)
            if target is not None:
                mapped[prefix + target] = value
            elif key.startswith(("proposal_generator.", "roi_heads.", "pixel_", "backbone.fpn")):
                report.ignored.append(key)  # detector parts ClipBERT never runs
            else:
                report.unexpected.append(key)
    _check_depth(model, mapped, prefix)
    assign(model, mapped, (prefix,), report)
    report.log("ResNet weights")
    return report


# ------------------------------------------------------------------------------------ original ClipBERT
_ORIGINAL_IGNORED = (
    "cnn.feature.proposal_generator.",
    "cnn.feature.roi_heads.",
    "cnn.feature.pixel_mean",
    "cnn.feature.pixel_std",
    "transformer.bert.visual_embeddings.position_embeddings.",
    "transformer.cls.predictions.decoder.",
)


def convert_original_key(key: str) -> str | None:
    """Our name for one original ClipBERT parameter name; None when it has no counterpart."""
    key = _rename_legacy_norm(key.removeprefix("module."))
    if key.startswith("cnn.feature.backbone."):
        target = detectron2_to_torchvision(key.removeprefix("cnn.feature.backbone."))
        return None if target is None else "cnn.backbone." + target
    if key.startswith("cnn.grid_encoder."):
        return key
    for old, new in (
        ("transformer.bert.visual_embeddings.", "visual_embeddings."),
        ("transformer.bert.embeddings.", "embeddings."),
        ("transformer.bert.encoder.", "encoder."),
        ("transformer.bert.pooler.", "pooler."),
        ("transformer.classifier.", "classifier."),
        ("transformer.cls.", "cls."),
    ):
        if key.startswith(old):
            return new + key.removeprefix(old)
    return None


def convert_original_state_dict(state: Mapping) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename an original ClipBERT state dict to ours; the report lists ignored and unexpected keys."""
    report = LoadReport()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in read_state_dict(state).items():
        bare = key.removeprefix("module.")
        if bare.startswith(_ORIGINAL_IGNORED) or bare.endswith("position_ids"):
            report.ignored.append(key)
            continue
        name = convert_original_key(bare)
        if name is None:
            report.unexpected.append(key)
        else:
            mapped[name] = value
    return mapped, report


# Top-level modules of the original e2e ClipBert (GridFeatBackbone's detectron2 model, the BERT transformer).
# cnn.grid_encoder is left out: our own save_pretrained names it the same way.
_ORIGINAL_ROOTS = ("cnn.feature.", "transformer.")

# Heads a checkpoint may lack, the log level and the note that they stay random: a pre-trained checkpoint
# has no classifier (the usual case: fine-tuning trains a new one), a fine-tuned one no cls.
_OPTIONAL_HEADS = {
    "classifier.": (
        logging.INFO,
        "classifier.* (the task head) not in the checkpoint: it stays randomly initialized, to be fine-tuned",
    ),
    "cls.": (
        logging.WARNING,
        "cls.* (pre-training heads) not in the checkpoint: they stay randomly "
        "initialized (a fine-tuned checkpoint: convert it with --no-pretrain-heads)",
    ),
}


def load_original_clipbert(model: nn.Module, source: str | Path | Mapping) -> LoadReport:
    """Load clipbert_image_text_pretrained.pt or a fine-tuned original checkpoint into a ClipBert.

    Missing keys are reported for the whole model except the temporal conv variants (new here) and the
    heads the checkpoint does not have (a pretrained checkpoint has no classifier, a fine-tuned one no cls):
    those are logged as staying randomly initialized. A state dict without any original name is an error.
    """
    _warn_if_not_msra(model)
    state = read_state_dict(source)
    _check_original_names(state, source)
    mapped, report = convert_original_state_dict(state)
    scope = ["cnn.backbone.", "cnn.grid_encoder.", "visual_embeddings.", "embeddings.", "encoder.", "pooler."]
    targets = model.state_dict()
    for head, (level, absent) in _OPTIONAL_HEADS.items():
        if any(k.startswith(head) for k in mapped):
            scope.append(head)
        elif any(k.startswith(head) for k in targets):
            # was silent: a fine-tuned checkpoint's conversion reported "missing 0" with random cls heads
            logger.log(level, "original ClipBERT checkpoint: %s", absent)
    assign(model, mapped, tuple(scope), report)
    report.log("original ClipBERT checkpoint")
    return report


def _check_original_names(state: Mapping, source: str | Path | Mapping) -> None:
    """An error unless some key is under the original's cnn.feature / transformer. Why: our own
    save_pretrained directory shares cnn.grid_encoder.0.weight with the original, so it "converted" into an
    almost randomly initialized model (loaded 1, missing 129) that was written to out_dir."""
    if any(k.removeprefix("module.").startswith(_ORIGINAL_ROOTS) for k in state):
        return
    where = "state dict" if isinstance(source, Mapping) else str(source)
    ours = any(k.startswith(("encoder.", "cnn.backbone.")) for k in state)
    hint = " It holds this project's names: load it with ClipBert.from_pretrained." if ours else ""
    raise ValueError(
        f"{where}: not an original ClipBERT checkpoint: no key under {' or '.join(_ORIGINAL_ROOTS)} (first "
        f"keys: {list(state)[:5]}).{hint}"
    )


# ----------------------------------------------------------------------------------------------- CLI
def convert_original_checkpoint(source: str | Path, out_dir: str | Path, cfg: ClipBertConfig) -> LoadReport:
    """Original ClipBERT checkpoint -> a ClipBert.save_pretrained directory (config + safetensors)."""
    from clipbert.models.clipbert import CONFIG_NAME, WEIGHTS_NAME, ClipBert

    model = ClipBert(cfg)
    report = load_original_clipbert(model, source)
    if not report.loaded:  # saving would write a randomly initialized model under the checkpoint's name
        raise ValueError(
            f"{source}: no tensor matches an original ClipBERT name ({len(report.unexpected)} unexpected, "
            f"e.g. {report.unexpected[:3]}): not an original ClipBERT checkpoint? Nothing written"
        )
    try:
        model.save_pretrained(out_dir)
    except BaseException:
        # Ctrl-C or a full disk mid-save left this config next to a cut-off (or an earlier run's) weights
        # file, a directory that looks converted: remove both, so it holds a whole conversion or none.
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            path = Path(out_dir) / name
            if path.is_file():
                path.unlink()
        raise
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m clipbert.models.weights",
        description="Convert an original ClipBERT checkpoint (e.g. clipbert_image_text_pretrained.pt) into a "
        "ClipBert.save_pretrained directory.",
    )
    parser.add_argument("checkpoint", help="original .pt file (torch.save of the e2e ClipBert state dict)")
    parser.add_argument("out_dir", help="output directory (clipbert_config.json + model.safetensors)")
    parser.add_argument("--preset", default="base", help="ClipBertConfig preset (default: base)")
    parser.add_argument("--num-answers", type=int, default=0, help="QA answer vocabulary size (head qa)")
    parser.add_argument(
        "--no-pretrain-heads", action="store_true", help="drop cls.* (fine-tuned checkpoints)"
    )
    parser.add_argument("--head", default="itm", choices=("itm", "mc", "qa"), help="task head (default: itm)")
    args = parser.parse_args(argv)
    try:
        cfg = ClipBertConfig.from_preset(
            args.preset,
            head=args.head,
            num_answers=args.num_answers,
            pretrain_heads=not args.no_pretrain_heads,
            # the original's backbone: detectron2 MSRA ResNet, FrozenBN, FREEZE_AT=2, BGR caffe input
            backbone_style="msra",
            frozen_bn=True,
            freeze_at=2,
            pixel_mean=None,
            pixel_std=None,
            channel_order=None,
        )
    except ValueError as err:  # an unknown preset, qa without --num-answers: argparse's usage error
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = convert_original_checkpoint(args.checkpoint, args.out_dir, cfg)
    except (ValueError, OSError, RuntimeError) as err:  # unreadable or foreign file, unwritable out_dir
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:  # was a traceback; convert_original_checkpoint removed a half-written out_dir
        logger.error("interrupted: nothing converted into %s; rerun", args.out_dir)
        return 130
    print(
        f"loaded {len(report.loaded)}, missing {len(report.missing)}, unexpected {len(report.unexpected)}, "
        f"ignored {len(report.ignored)} -> {args.out_dir}"
    )
    if report.missing or report.unexpected:  # written, but not the whole checkpoint: say so as an error
        logger.error(
            "incomplete conversion: missing %s, unexpected %s", report.missing[:5], report.unexpected[:5]
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
