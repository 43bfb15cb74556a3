"""Explainability-guided input-stage pruning: a CLIP analogue of Lei et al. (arXiv 2506.01097).

The paper's code and exact recipe are undisclosed (``shared/reference/clip_compression.md`` 3.2, 4.7);
this is our analogue for a CLIP image tower, not a reproduction:

1. **Relevance targets** (``chefer_relevance``): gradient-weighted attention relevance of the image-text
   score, after Chefer et al. ("Generic Attention-model Explainability", ICCV 2021). For every block b,
   A_b = attention probabilities, G_b = d score / d A_b; with R = I and, block by block,
   R <- R + mean_heads((G_b * A_b)^+) R. The tower pools by averaging, so a patch's relevance is its
   column of R averaged over the (query) rows, identity removed. The score is
   ``logit_scale * cos(image, caption)`` with the scene's own caption.
2. **Predictor** (``ExplainPredictor``, shipped as ``explain-shapes64``): a 3-layer conv net on the patch
   grid reads only the **first block's attention maps** -- per head: attention received (mean over
   queries), its maximum, the self-attention, the entropy of the token's own row (4 x heads channels) --
   and predicts the relevance as a distribution over patches (KL loss). Fully convolutional: it runs on
   any grid size. Trained by the Foundation trainer: ``mmtok train configs/explain-shapes64.yaml``; the
   frozen CLIP it explains is named by its ``clip`` argument and is not part of its weights.
3. **Pruning at the input** (``ExplainCompressor``, layer 0): block 1's attention on all tokens, the
   predictor, top-k, and the dropped tokens' area recycled into their nearest kept tokens
   (``base.recycle``) -- then every block runs on the kept tokens (block 1 reuses the queries, keys and
   values it computed for its attention maps).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..errors import ConfigError, InputError
from ..hub import MmtokModel, register_model
from .base import RECYCLE, AttnInfo, Compressed, Compressor, TowerRunner, budget, recycle, select

N_FEATURES = 4  # per head


def attention_features(probs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """First-block attention [B, H, N, N] -> predictor input [B, 4H, h, w] (scale-free: x N, / log N).

    Reductions run in the maps' own dtype (bf16 under autocast: the N x N maps are the cost) and only the
    [B, H, N] results are cast; the column mean is a matrix product (fast) rather than a strided sum."""
    b, h, n, _ = probs.shape
    p = probs
    ones = torch.ones(1, n, dtype=p.dtype, device=p.device)
    received = (ones @ p)[:, :, 0].float()  # attention token j receives, x N: 1 = average
    peak = p.amax(2).float() * n
    own = p.diagonal(dim1=2, dim2=3).float() * n
    entropy = -(p * p.clamp(min=1e-12).log()).sum(-1).float() / math.log(n)
    logs = [t.clamp(min=1e-6).log() for t in (received, peak, own)]
    feats = torch.stack([*logs, entropy], 2)
    return feats.reshape(b, h * N_FEATURES, *grid)


def _manual_block(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm block with explicit attention probabilities (kept in the graph for gradients)."""
    attn = block.attn
    h = block.norm1(x)
    b, n, _ = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    o = attn.proj(attn.norm((a @ v).transpose(1, 2).reshape(b, n, attn.attn_dim)))
    x = x + block.ls1(o)
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return x, a


def chefer_relevance(clip_model, images: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Relevance [B, N] >= 0 of each patch for the score of image i with (normalised) text embedding i."""
    runner = TowerRunner(clip_model.clip.visual)
    with torch.enable_grad():
        x, _ = runner.embed(images)
        x = x.detach().requires_grad_(True)
        maps = []
        for block in runner.trunk.blocks:
            x, a = _manual_block(block, x)
            maps.append(a)
        pooled, _ = runner.head(x, None)
        score = clip_model.logit_scale.exp() * (F.normalize(pooled, dim=-1) * text_embeds).sum(-1)
        grads = torch.autograd.grad(score.sum(), maps)
    b, _, n, _ = maps[0].shape
    eye = torch.eye(n, device=images.device).expand(b, n, n)
    r = eye.clone()
    for a, g in zip(maps, grads, strict=True):
        cam = (g * a).clamp(min=0).mean(1).detach()
        r = r + cam @ r
    return (r - eye).mean(1).clamp(min=0)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation per row of [B, N] tensors (average ranks not needed: continuous values)."""
    ra = a.float().argsort(1).argsort(1).float()
    rb = b.float().argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-9)


def topk_overlap(pred: torch.Tensor, target: torch.Tensor, frac: float = 0.25) -> torch.Tensor:
    """Share of the target's top ``frac`` patches that are in the prediction's top ``frac`` (per row)."""
    k = max(1, round(frac * pred.shape[1]))
    p = torch.zeros_like(pred, dtype=torch.bool).scatter_(1, pred.topk(k, 1).indices, True)
    t = torch.zeros_like(target, dtype=torch.bool).scatter_(1, target.topk(k, 1).indices, True)
    return (p & t).float().sum(1) / k


@register_model
class ExplainPredictor(MmtokModel):
    """Predicts explainability relevance per patch from the first block's attention maps.

    Args:
        heads: attention heads of the tower's first block.
        width: conv channels.
        depth: conv layers (3x3, GELU), then a 1x1 to one logit per patch.
        clip: the CLIP model (name or folder) whose relevance it learns; used only in training.
    """

    task: ClassVar[str] = "compress"

    def __init__(self, heads: int = 4, width: int = 32, depth: int = 3, clip: str = "lightclip-shapes64"):
        super().__init__()
        if heads < 1 or width < 1 or depth < 1:
            raise ConfigError("ExplainPredictor: heads, width and depth must be positive")
        self.heads, self.clip_name = int(heads), str(clip)
        layers: list[nn.Module] = []
        c = heads * N_FEATURES
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GELU()]
            c = width
        layers.append(nn.Conv2d(c, 1, 1))
        self.net = nn.Sequential(*layers)
        self._teacher: list[Any] = []  # the frozen CLIP (training only): a plain list, not a submodule

    def forward(self, probs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """First-block attention probabilities [B, H, N, N] -> relevance logits [B, N]."""
        if probs.shape[1] != self.heads:
            raise InputError(f"the predictor expects {self.heads} attention heads, got {probs.shape[1]}")
        feats = attention_features(probs, grid).to(self.net[0].weight.dtype)
        return self.net(feats).flatten(1).float()

    # -- training ---------------------------------------------------------------------------------

    def teacher(self, device: torch.device):
        if not self._teacher:
            from ..clip import model as _clip  # noqa: F401  (registers LightCLIP; open_clip, on use)

            clip = hub.load(self.clip_name)
            for p in clip.parameters():
                p.requires_grad_(False)
            self._teacher.append(clip)
        clip = self._teacher[0]
        if clip.logit_scale.device != device:
            clip.to(device)
        return clip

    def __deepcopy__(self, memo):  # EMA copies: share the frozen teacher, copy the weights
        import copy

        new = type(self)(**self.config) if self.config else type(self)(self.heads)
        new.load_state_dict(copy.deepcopy(self.state_dict(), memo))
        new._teacher = self._teacher
        new.train(self.training)
        return new

    def targets(self, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(first-block attention [B, H, N, N], relevance targets [B, N], grid) from the frozen CLIP."""
        clip = self.teacher(images.device)
        runner = TowerRunner(clip.clip.visual)
        with torch.autocast(images.device.type, enabled=False):
            with torch.no_grad():
                text = clip.encode_text(list(captions))["embeds"].float()
                x, grid = runner.embed(images.float())
                probs = runner.attention_probs(runner.trunk.blocks[0], x).probs
            rel = chefer_relevance(clip, images.float(), text)
        return probs, rel, grid

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        probs, rel, grid = self.targets(batch["image"], batch["caption"])
        target = rel / rel.sum(1, keepdim=True).clamp(min=1e-12)
        logits = self(probs, grid)
        loss = -(target * logits.log_softmax(1)).sum(1).mean()
        loss = loss + (target * target.clamp(min=1e-12).log()).sum(1).mean()  # = KL(target || pred)
        with torch.no_grad():
            logs = {"kl": loss.item(), "top25": topk_overlap(logits, rel).mean().item()}
        return loss, logs

    @torch.no_grad()
    def evaluate(
        self, dataset, device: str | torch.device = "cpu", batch_size: int = 128
    ) -> dict[str, float]:
        """Against the relevance targets on ``dataset``: Spearman and top-25% overlap of the prediction,
        and of the plain first-block attention received (the no-training ranking) for comparison."""
        was = self.training
        self.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        sums: dict[str, float] = {}
        count = 0
        for batch in loader:
            images = batch["image"].to(device)
            probs, rel, grid = self.targets(images, batch["caption"])
            pred = self(probs, grid)
            received = probs.mean((1, 2))
            values = {
                "spearman": rank_correlation(pred, rel),
                "top25_overlap": topk_overlap(pred, rel),
                "attn_spearman": rank_correlation(received, rel),
                "attn_top25_overlap": topk_overlap(received, rel),
            }
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            count += len(images)
        self.train(was)
        return {k: v / count for k, v in sums.items()} | {"n": count}


class ExplainCompressor(Compressor):
    """Prune at the tower's input: keep the round(keep N) patches of highest predicted relevance."""

    name = "explain"
    layer = 0
    needs_probs = True

    def __init__(self, predictor: ExplainPredictor, recycle: str = "size"):
        super().__init__()
        if recycle not in RECYCLE:
            raise InputError(f"recycle must be one of {', '.join(RECYCLE)}, got {recycle!r}")
        self.predictor, self.recycle = predictor, recycle

    def scores(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        side = int(round(n**0.5))
        if side * side != n:
            raise InputError(f"{n} tokens do not form a square grid")
        return self.predictor(probs, (side, side))

    def compress(self, tokens: torch.Tensor, attn: AttnInfo | None, keep: float = 0.5) -> Compressed:
        if attn is None or attn.probs is None:
            raise InputError("the explainability compressor needs the first block's attention maps")
        n = tokens.shape[1]
        score = self.scores(attn.probs, n)
        index = score.topk(budget(n, keep), dim=1).indices
        out = select(tokens, index, attn.sizes)._replace(extra={"relevance": score.softmax(1)})
        return recycle(out, tokens, attn.keys, attn.sizes, self.recycle)
