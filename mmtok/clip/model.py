"""LightCLIP: a small CLIP on open_clip + timm towers, trained with LightCLIP's three objectives.

Architecture = an open_clip model config (``model_configs/*.json``, registered with
``open_clip.add_model_config``): a timm image tower (``mmtok_vit_p8_64``: ViT, patch 8 at 64x64 = 64
patch tokens; ``mmtok_resnet_tiny_64``: a small ResNet, 4x4 tokens) and open_clip's text transformer
over the shared CLIP BPE ``TextTokenizer`` with one extra ``<mask>`` token (vocabulary 49,409). So
``open_clip.create_model("lightclip-vit-p8-64")`` builds exactly ``LightCLIP(...).clip`` -- same
modules, same state-dict keys -- and a trained ``clip`` state dict loads into it.

    model = mmtok.load("lightclip-shapes64")
    img = model.encode_image(images)              # {"embeds": [B, E] normalised, "tokens": [B, 64, E]}
    txt = model.encode_text(["a red circle"])      # {"embeds", "tokens", "word_mask"}
    probs = (model.logit_scale.exp() * img["embeds"] @ txt["embeds"].T).softmax(-1)

Training (``training_step``) switches on, by kwargs: the contrastive term (``"clip"``, ``"soft"``:
progressive soft labels, or ``"siglip"``), token alignment (``token_weight``) and masked language
modelling with image fusion (``mlm_weight``), and composition-aware hard negatives
(``negative_weight``). The fusion blocks (cross-attention from the masked text to
the image tokens after every ``fusion_every``-th text layer) and the MLM head exist only while training:
``save_pretrained`` writes the model without them, so inference costs exactly a plain CLIP.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CustomTextCLIP
from timm.models import register_model as register_timm_model
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import ConfigError, InputError
from ..hub import MmtokModel, register_model
from ..tokenizers.text import TextTokenizer
from . import losses

CONFIG_DIR = Path(__file__).parent / "model_configs"
CONTRASTIVE = ("clip", "soft", "siglip")
MASK_TOKEN = "<mask>"
CURVE_SEED = 11  # held-out scenes of the training-time zero-shot curve (not the reported seed 0)


# ----------------------------------------------------------------------------- timm towers

# Registered with timm (not built by hand) so that open_clip's TimmModel adapter, which creates its trunk
# by name, builds them: the open_clip config is then the whole architecture. Both accept timm's usual
# keyword arguments (open_clip passes num_classes / global_pool / drop_path_rate).


def _model_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # timm.create_model also passes its pretrained-weights plumbing; these models have no weights.
    return {
        k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
    }


def _timm_cfg(model: nn.Module, image_size: int) -> nn.Module:
    # timm sets these in build_model_with_cfg; open_clip's adapter reads default_cfg.
    cfg = {"input_size": (3, image_size, image_size), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    model.pretrained_cfg = model.default_cfg = cfg
    return model


@register_timm_model
def mmtok_vit_p8_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 64x64 inputs: patch 8 (64 tokens), width 128, 4 blocks; no class token, mean pooling."""
    args = dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0)
    # No class token and norm before pooling: every output token is a normalised patch token.
    args |= dict(class_token=False, global_pool="avg", fc_norm=False)
    return _timm_cfg(VisionTransformer(**(args | _model_kwargs(kwargs))), 64)


@register_timm_model
def mmtok_vit_tiny_test(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Tiny ViT for tests: patch 16 (16 tokens), width 32, 1 block."""
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
    args |= dict(class_token=False, global_pool="avg", fc_norm=False)
    return _timm_cfg(VisionTransformer(**(args | _model_kwargs(kwargs))), 64)


@register_timm_model
def mmtok_resnet_tiny_64(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 with narrow stages (32-256 channels), output stride 16: 4x4 tokens at 64x64."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32)
    return _timm_cfg(ResNet(**(args | {"output_stride": 16} | _model_kwargs(kwargs))), 64)


# ----------------------------------------------------------------------------- open_clip configs


@cache
def _register_configs() -> None:
    open_clip.add_model_config(CONFIG_DIR)


def list_archs() -> list[str]:
    """Names of the open_clip model configs mmtok ships (usable with ``open_clip.create_model``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def arch_config(name: str) -> dict[str, Any]:
    """The open_clip model config ``name`` (a fresh copy)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"unknown LightCLIP arch {name!r}: use one of {', '.join(list_archs())}")
    return json.loads(path.read_text())


_register_configs()


# ----------------------------------------------------------------------------- training-only modules


class FusionBlock(nn.Module):
    """Cross-attention from (masked) text tokens to image tokens, with a residual.

    Used only by the MLM branch: it lets a masked word be recovered from the picture, which pushes the
    image tower to encode what words name. Dropped at export.
    """

    def __init__(self, width: int, image_width: int, heads: int):
        super().__init__()
        self.ln_text = nn.LayerNorm(width)
        self.ln_image = nn.LayerNorm(image_width)
        self.attn = nn.MultiheadAttention(width, heads, kdim=image_width, vdim=image_width, batch_first=True)

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        kv = self.ln_image(image_tokens)
        return x + self.attn(self.ln_text(x), kv, kv, need_weights=False)[0]


# ----------------------------------------------------------------------------- the model


@register_model
class LightCLIP(MmtokModel):
    """Lightweight CLIP (timm image tower + CLIP-BPE text tower) with LightCLIP's training objectives.

    Args:
        arch: open_clip model config shipped in ``mmtok/clip/model_configs`` (``list_archs()``).
        contrastive: ``"clip"`` (open_clip ``ClipLoss``), ``"soft"`` (progressive soft labels) or
            ``"siglip"`` (open_clip ``SigLipLoss``; adds a learned logit bias).
        soft_alpha: final share of target mass on the negatives (``"soft"`` only).
        soft_ramp_steps: training steps over which the share ramps up linearly from 0.
        soft_targets: ``"similarity"`` or ``"uniform"`` weights over the negatives.
        token_weight: weight of the token-level (patch-word) contrastive loss; 0 switches it off.
        token_match: ``"max"``, ``"topk"`` or ``"hungarian"`` (see ``losses.token_scores``).
        token_topk: k of ``"topk"``.
        mlm_weight: weight of masked language modelling with image fusion; 0 switches it off.
        mlm_prob: share of caption words masked.
        fusion_every: a fusion block after every this many text layers.
        negative_weight: weight of the composition-aware hard-negative loss (NegCLIP, Yuksekgonul et
            al. 2023): each image must score its caption above every caption of the batch and every
            item's ``negative`` (its scene with two colours or slots swapped, or a shape replaced; the
            datasets' ``negatives: true``); 0 switches it off.
        train_heads: build the fusion blocks and MLM head (default: when ``mlm_weight`` > 0). Exported
            checkpoints have it False: inference never needs them.
    """

    task: ClassVar[str] = "clip"

    def __init__(
        self,
        arch: str = "lightclip-vit-p8-64",
        contrastive: str = "clip",
        soft_alpha: float = 0.2,
        soft_ramp_steps: int = 1000,
        soft_targets: str = "similarity",
        token_weight: float = 0.0,
        token_match: str = "max",
        token_topk: int = 2,
        mlm_weight: float = 0.0,
        mlm_prob: float = 0.15,
        fusion_every: int = 2,
        negative_weight: float = 0.0,
        train_heads: bool | None = None,
    ):
        super().__init__()
        if contrastive not in CONTRASTIVE:
            raise ConfigError(f"contrastive must be one of {', '.join(CONTRASTIVE)}, got {contrastive!r}")
        if token_match not in losses.TOKEN_MATCHES:
            raise ConfigError(f"token_match must be one of {', '.join(losses.TOKEN_MATCHES)}")
        if soft_targets not in losses.SOFT_TARGETS:
            raise ConfigError(f"soft_targets must be one of {', '.join(losses.SOFT_TARGETS)}")
        cfg = arch_config(arch)
        cfg.pop("custom_text", None)
        if contrastive == "siglip":  # SigLIP's initialisation (open_clip's SigLIP configs)
            cfg |= {"init_logit_scale": float(np.log(10)), "init_logit_bias": -10.0}
        # open_clip's own class: identical to open_clip.create_model(arch) (same modules and keys).
        self.clip = CustomTextCLIP(**cfg)
        text_cfg = cfg["text_cfg"]
        self.tokenizer = TextTokenizer.clip(text_cfg["context_length"], extra_special_tokens=(MASK_TOKEN,))
        if self.tokenizer.vocab_size != text_cfg.get("vocab_size", 49408):
            raise ConfigError(
                f"arch {arch}: text vocab_size must be {self.tokenizer.vocab_size} (CLIP BPE + <mask>)"
            )
        self.arch, self.contrastive = arch, contrastive
        self.token_weight, self.token_match, self.token_topk = float(token_weight), token_match, token_topk
        self.mlm_weight, self.mlm_prob = float(mlm_weight), float(mlm_prob)
        self.negative_weight = float(negative_weight)
        self.image_size = int(cfg["vision_cfg"].get("image_size", 64))
        if contrastive == "siglip":
            self.contrastive_loss = losses.SigLipLoss()
        elif contrastive == "soft":
            self.contrastive_loss = losses.SoftClipLoss(soft_alpha, soft_ramp_steps, soft_targets)
        else:
            self.contrastive_loss = losses.ClipLoss()
        # Training steps taken (the soft-label schedule's clock); saved, so a resumed run continues it.
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

        self.train_heads = mlm_weight > 0 if train_heads is None else bool(train_heads)
        if self.train_heads:
            text = self.clip.text
            image_width = self.clip.visual.trunk.num_features
            layers = len(text.transformer.resblocks)
            self.fusion = nn.ModuleDict(
                {
                    str(i): FusionBlock(text.width, image_width, text.heads)
                    for i in range(fusion_every - 1, layers, fusion_every)
                }
            )
            # Decoder tied to the token embedding (BERT): the head adds width^2 weights, not vocab x width.
            self.mlm_head = nn.Sequential(
                nn.Linear(text.width, text.width), nn.GELU(), nn.LayerNorm(text.width)
            )

    # -- export ---------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save for inference: without the fusion blocks and MLM head (``train_heads=False``)."""
        if not self.train_heads:
            return super().save_pretrained(save_directory, *args, **kwargs)
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        with torch.random.fork_rng():  # building the copy draws init weights: leave the caller's RNG alone
            lean = type(self)(**(config | {"train_heads": False}))
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("fusion.", "mlm_head."))}
        lean.load_state_dict(state, strict=True)
        lean.to(next(self.parameters()).dtype)
        return lean.save_pretrained(save_directory, *args, **kwargs)

    # -- inference ------------------------------------------------------------------------------

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor | None:
        return self.clip.logit_bias

    def tokenize(self, texts: str | list[str]):
        return self.tokenizer(texts).to(self.logit_scale.device)

    def image_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unnormalised image outputs: ``pooled`` [B, E] (= ``self.clip.visual(images)``), ``tokens``
        [B, N, E] (patch tokens projected into the joint space) and ``trunk_tokens`` [B, N, C]."""
        visual = self.clip.visual
        feats = visual.trunk.forward_features(images)
        pooled = visual.head(visual.trunk.forward_head(feats))
        if feats.ndim == 4:  # CNN feature map -> one token per position
            trunk_tokens = feats.flatten(2).transpose(1, 2)
        else:
            trunk_tokens = feats[:, getattr(visual.trunk, "num_prefix_tokens", 0) :]
        return {"pooled": pooled, "tokens": visual.head(trunk_tokens), "trunk_tokens": trunk_tokens}

    def text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Unnormalised text outputs. With ``image_tokens`` (MLM branch) the fusion blocks run too.

        The walk over open_clip's text modules equals ``self.clip.encode_text`` on unmasked text, but
        pools at the last real token (EOT) from the attention mask: ``<mask>``'s id is above EOT's, so
        open_clip's argmax pooling would pick a mask.
        """
        text = self.clip.text
        n = input_ids.shape[1]
        x = text.token_embedding(input_ids) + text.positional_embedding[:n]
        causal = text.attn_mask[:n, :n] if text.attn_mask is not None else None
        for i, block in enumerate(text.transformer.resblocks):
            x = block(x, attn_mask=causal)
            if image_tokens is not None and str(i) in self.fusion:
                x = self.fusion[str(i)](x, image_tokens)
        hidden = text.ln_final(x)
        tokens = hidden @ text.text_projection
        last = attention_mask.sum(1) - 1
        pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        return {"pooled": pooled, "tokens": tokens, "hidden": hidden}

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise InputError(f"LightCLIP expects Bx3xHxW images in [-1, 1], got {shape}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images.float(),
                size=(self.image_size,) * 2,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return images.to(self.logit_scale.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> dict[str, torch.Tensor]:
        """``embeds`` [B, E] and patch ``tokens`` [B, N, E] (normalised when ``normalize``)."""
        out = self.image_features(self._check_images(images))
        if normalize:
            return {
                "embeds": F.normalize(out["pooled"], dim=-1),
                "tokens": F.normalize(out["tokens"], dim=-1),
            }
        return {"embeds": out["pooled"], "tokens": out["tokens"]}

    def encode_text(self, texts: str | list[str], normalize: bool = True) -> dict[str, torch.Tensor]:
        """``embeds`` [T, E], word ``tokens`` [T, L, E] and ``word_mask`` [T, L] (words, not SOT/EOT/pad)."""
        batch = self.tokenize(texts)
        out = self.text_features(batch.input_ids, batch.attention_mask)
        embeds, tokens = out["pooled"], out["tokens"]
        if normalize:
            embeds, tokens = F.normalize(embeds, dim=-1), F.normalize(tokens, dim=-1)
        return {"embeds": embeds, "tokens": tokens, "word_mask": _word_mask(batch.attention_mask)}

    def forward(self, images: torch.Tensor, texts: str | list[str]) -> torch.Tensor:
        """Image-text logits [B, T] (``logit_scale * cos``, plus the bias for SigLIP models)."""
        logits = (
            self.logit_scale.exp() * self.encode_image(images)["embeds"] @ self.encode_text(texts)["embeds"].T
        )
        return logits + self.logit_bias if self.logit_bias is not None else logits

    # -- training -------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        text = self.tokenizer(list(batch["caption"]))
        text = text.to(batch["image"].device)
        n = int(text.lengths.max())  # drop the all-padding tail: cheaper, and the same result
        ids, attention = text.input_ids[:, :n], text.attention_mask[:, :n]
        img = self.image_features(batch["image"])
        txt = self.text_features(ids, attention)
        u, v = F.normalize(img["pooled"].float(), dim=-1), F.normalize(txt["pooled"].float(), dim=-1)
        scale = self.clip.logit_scale.exp().clamp(max=100)
        step = int(self.train_steps)
        if self.contrastive == "soft":
            itc = self.contrastive_loss(u, v, scale, step=step)
        elif self.contrastive == "siglip":
            itc = self.contrastive_loss(u, v, scale, self.clip.logit_bias)
        else:
            itc = self.contrastive_loss(u, v, scale)
        loss, logs = itc, {"itc": itc.item(), "logit_scale": scale.item()}
        if self.contrastive == "soft":
            logs["soft_alpha"] = losses.soft_alpha(
                step, self.contrastive_loss.alpha_max, self.contrastive_loss.ramp_steps
            )
        if self.token_weight > 0:
            scores = losses.token_scores(
                img["tokens"], txt["tokens"], _word_mask(attention), self.token_match, self.token_topk
            )
            tok = losses.token_contrastive_loss(scores, scale)
            loss = loss + self.token_weight * tok
            logs["token"] = tok.item()
        if self.negative_weight > 0:
            if "negative" not in batch:
                raise ConfigError("negative_weight > 0 needs hard negatives: set negatives: true on the data")
            neg = self.tokenizer(list(batch["negative"])).to(batch["image"].device)
            m = int(neg.lengths.max())
            w = F.normalize(
                self.text_features(neg.input_ids[:, :m], neg.attention_mask[:, :m])["pooled"].float(), dim=-1
            )
            logits = scale * u @ torch.cat([v, w]).T  # [B, 2B]: the batch's captions, then its negatives
            hard = F.cross_entropy(logits, torch.arange(len(u), device=u.device))
            loss = loss + self.negative_weight * hard
            logs["neg"] = hard.item()
            logs["neg_acc"] = (
                ((u * v).sum(-1) > (u * w).sum(-1)).float().mean().item()
            )  # true above its negative
        if self.mlm_weight > 0:
            if not self.train_heads:  # an exported checkpoint: its fusion blocks were dropped
                raise ConfigError("mlm_weight > 0 needs train_heads=True (fusion blocks and MLM head)")
            masked, labels = losses.mask_tokens(ids, attention, self.tokenizer.mask_token_id, self.mlm_prob)
            hidden = self.text_features(masked, attention, image_tokens=img["trunk_tokens"])["hidden"]
            picked = labels != -100
            logits = self.mlm_head(hidden[picked]) @ self.clip.text.token_embedding.weight.T
            mlm = F.cross_entropy(logits.float(), labels[picked])
            loss = loss + self.mlm_weight * mlm
            logs["mlm"] = mlm.item()
            logs["mlm_acc"] = (logits.argmax(-1) == labels[picked]).float().mean().item()
        if self.training:
            self.train_steps += 1
        return loss, logs

    @torch.no_grad()
    def evaluate(
        self, dataset, device: str | torch.device = "cpu", batch_size: int = 256
    ) -> dict[str, float]:
        """Image-text retrieval recall@1/5/10 on ``dataset``'s (image, caption) pairs, zero-shot object
        accuracy on 256 held-out single-object scenes (``zeroshot_heldout/*``) and the binding test on
        256 held-out two-object scenes (``binding_heldout/colour_swap_acc``): the learning curve. Its
        seed (11) is the curve's own; reported figures come from ``mmtok eval clip`` on other scenes
        (seed 0, 1,000)."""
        from .zeroshot import binding_test, embed_pairs, retrieval_metrics, shapes_zero_shot

        was_training = self.training
        self.eval()
        image_embeds, text_embeds = embed_pairs(self, dataset, device=device, batch_size=batch_size)
        zero_shot = shapes_zero_shot(self, "heldout", n=256, seed=CURVE_SEED)
        binding = binding_test(self, n=256, seed=CURVE_SEED)
        self.train(was_training)
        metrics = retrieval_metrics(image_embeds, text_embeds) | {"n": len(dataset)}
        metrics |= {f"zeroshot_heldout/{k}": v for k, v in zero_shot.items()}
        return metrics | {f"binding_heldout/{k}": v for k, v in binding.items() if k != "n"}


def _word_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """True at caption words: real tokens other than SOT (first) and EOT (last)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]
    return (positions >= 1) & (positions < attention_mask.sum(1, keepdim=True) - 1)


def create_open_clip(arch: str) -> nn.Module:
    """``open_clip.create_model(arch)`` for a shipped arch (the configs are registered on import)."""
    _register_configs()
    if arch not in list_archs():
        raise ConfigError(f"unknown LightCLIP arch {arch!r}: use one of {', '.join(list_archs())}")
    return open_clip.create_model(arch, pretrained=None)


__all__ = ["CONTRASTIVE", "FusionBlock", "LightCLIP", "arch_config", "create_open_clip", "list_archs"]
