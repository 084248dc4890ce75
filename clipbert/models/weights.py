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
    or a HF-style directory.

    Unwraps {"model": ...} / {"state_dict": ...} containers (detectron2, trainers) and numpy values.
    """
    if isinstance(source, Mapping):
        state = source
    else:
        path = Path(source)
        if path.is_dir():
            candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _load_torch_or_pickle(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} holds a {type(state).__name__}, not a state dict (a mapping of names)")
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return {k: torch.as_tensor(v) for k, v in state.items() if hasattr(v, "shape")}


def _load_torch_or_pickle(path: Path):
    """torch.save's format, else a plain pickle. Why: detectron2's model-zoo .pkl files ({"model": {name:
    numpy array}, "__author__": ...}) are plain pickles, which torch.load rejects ("Invalid magic number")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as torch_err:
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")  # latin1: detectron2's Python 2 era pickles
        except Exception as pickle_err:  # any unpickling failure: report both readers' reasons
            raise ValueError(
                f"cannot read {path}: not a torch checkpoint ({torch_err}) nor a pickle ({pickle_err})"
            ) from pickle_err


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


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
    state = _strip_prefix(read_state_dict(source), "module.")
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
    scope = ("embeddings.", "encoder.", "pooler.")
    if has_cls and any(k.startswith("cls.") for k in mapped):
        scope += ("cls.",)
    assign(model, mapped, scope, report)
    report.log(f"BERT weights from {source if not isinstance(source, Mapping) else 'state dict'}")
    return report


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


def _detect_resnet_format(state: dict[str, torch.Tensor]) -> str:
    if any(k.endswith("stem.conv1.weight") for k in state):
        return "detectron2"
    if "conv1.weight" in state or any(k.startswith("layer1.") for k in state):
        return "torchvision"
    raise ValueError(
        "unrecognized ResNet checkpoint: expected torchvision names (conv1.weight, layer1.0.conv1.weight) or "
        f"detectron2 names (stem.conv1.weight, res2.0.conv1.weight); first keys: {list(state)[:5]}"
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
    'backbone.' prefixes; the fc layer and detector heads are ignored."""
    state = _strip_prefix(read_state_dict(source), "module.")
    report = LoadReport()
    mapped: dict[str, torch.Tensor] = {}
    if _detect_resnet_format(state) == "torchvision":
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


def load_original_clipbert(model: nn.Module, source: str | Path | Mapping) -> LoadReport:
    """Load clipbert_image_text_pretrained.pt or a fine-tuned original checkpoint into a ClipBert.

    Missing keys are reported for the whole model except the temporal conv variants (new here) and the
    heads the checkpoint does not have: a pretrained checkpoint has no classifier, a fine-tuned one no cls.
    """
    _warn_if_not_msra(model)
    mapped, report = convert_original_state_dict(read_state_dict(source))
    scope = ["cnn.backbone.", "cnn.grid_encoder.", "visual_embeddings.", "embeddings.", "encoder.", "pooler."]
    for head in ("classifier.", "cls."):
        if any(k.startswith(head) for k in mapped):
            scope.append(head)
    assign(model, mapped, tuple(scope), report)
    report.log("original ClipBERT checkpoint")
    return report


# ----------------------------------------------------------------------------------------------- CLI
def convert_original_checkpoint(source: str | Path, out_dir: str | Path, cfg: ClipBertConfig) -> LoadReport:
    """Original ClipBERT checkpoint -> a ClipBert.save_pretrained directory (config + safetensors)."""
    from clipbert.models.clipbert import ClipBert

    model = ClipBert(cfg)
    report = load_original_clipbert(model, source)
    if not report.loaded:  # saving would write a randomly initialized model under the checkpoint's name
        raise ValueError(
            f"{source}: no tensor matches an original ClipBERT name ({len(report.unexpected)} unexpected, "
            f"e.g. {report.unexpected[:3]}): not an original ClipBERT checkpoint? Nothing written"
        )
    model.save_pretrained(out_dir)
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
    parser.add_argument("--head", default="itm", choices=("itm", "mc", "qa"), help="task head")
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
    except (ValueError, OSError, RuntimeError) as err:  # unreadable or foreign file
        logger.error("%s", err)
        return 2
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
