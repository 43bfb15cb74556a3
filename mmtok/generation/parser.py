"""A learned prompt parser: text -> what goes in each slot of the scene (the layout prompt encoder).

xAR's own prompt encoder, trained only through the flow-matching loss, never learnt which colour
belongs to which object (docs/generation.md: its features probe no better than a random encoder's).
An encoder trained with a direct signal does. This is that encoder as a model of its own, a tagger:

    prompt -> CLIP BPE tokens -> ``TextEncoder`` (a small transformer over the words)
           -> per token: is it the noun of a newly mentioned object? if so its shape, colour, size
              and slot (the slot may be named, "in the top left", or relative, "above it")
           -> per slot: the objects the tokens put there, as probabilities (class 0 = empty slot)
           -> global: the background, from the mean token (class 0 = not said)

Tagging each object's noun makes every decision local to one place in the sentence, which a small
transformer learns within minutes; nine learned slot queries that must find their object by content
(the first design, ``docs/generation.md``) sat at 34% of test captions exactly right after 2,000
steps. Training reads text alone: captions of the shapes grammar with their scenes (no image is
rendered); the k-th object the caption introduces is the k-th object ``parse_caption`` recovers, and
the labels are the scene's. Frozen inside the generator (``XAR(text_encoder="slots")``).

With ``grammar=True`` a prompt that the caption grammar parses (``mmtok.data.shapes.parse_caption``)
gets its exact layout and only other prompts go through the network; ``grammar=False`` reads every
prompt with the network (how its accuracy is measured).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import (
    COLOURS,
    SHAPES,
    SIZES,
    caption_background,
    labels_from_scene,
    mention_ends,
    parse_caption,
    vocabulary,
)
from ..hub import MmtokModel, register_model
from ..nn.text import TextEncoder
from ..tokenizers.text import TextTokenizer
from .common import validation_loss

# The shapes test bed's attributes (mmtok.data.shapes): 8 shapes, 8 colours, 2 sizes, 5 backgrounds;
# class 0 is "empty slot" (slot heads) or "not said" (global heads).
SHAPES_SLOT_HEADS = {"shape": 9, "colour": 9, "size": 3}
SHAPES_GLOBAL_HEADS = {"background": 6}


@register_model
class PromptParser(MmtokModel):
    """Prompt -> per-slot and global attribute probabilities, by tagging the objects' nouns.

    Args:
        slots: number of scene slots (9: the shapes test bed's 3 x 3 grid, row-major).
        slot_heads: attribute name -> classes per slot (class 0 = empty).
        global_heads: attribute name -> classes for the whole scene (class 0 = not said).
        dim, heads: width and attention heads of the encoder.
        length: CLIP context length (longer prompts are refused by the pipelines).
        embed_dim: width of the word embedding table (projected to ``dim``; the vocabulary is 49k).
        layers: transformer layers over the words.
        grammar: read prompts that the shapes caption grammar parses exactly (see the module doc).
        compact_vocab: embed only the grammar's words (``mmtok.data.shapes.vocabulary()``), every
            other token as one "unknown" row (~200 rows instead of 49,408).
    """

    task = "prompt-parser"

    def __init__(
        self,
        slots: int = 9,
        slot_heads: dict[str, int] | None = None,
        global_heads: dict[str, int] | None = None,
        dim: int = 128,
        heads: int = 4,
        length: int = 48,
        embed_dim: int = 64,
        layers: int = 4,
        grammar: bool = True,
        compact_vocab: bool = False,
    ):
        super().__init__()
        self.slots, self.length, self.grammar = slots, length, bool(grammar)
        self.slot_heads = dict(SHAPES_SLOT_HEADS if slot_heads is None else slot_heads)
        self.global_heads = dict(SHAPES_GLOBAL_HEADS if global_heads is None else global_heads)

        words = vocabulary() if compact_vocab else None
        tokenizer = TextTokenizer.clip(context_length=length)
        self.encoder = TextEncoder(tokenizer, dim, heads, embed_dim, layers, words=words)
        # per token: object noun or not, its slot, and each attribute without the "empty" class
        self.is_object = nn.Linear(dim, 2)
        self.slot = nn.Linear(dim, slots)
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n - 1) for k, n in self.slot_heads.items()})
        self.global_out = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in self.global_heads.items()})

    def count_tokens(self, prompt: str) -> int:
        return self.encoder.count_tokens(prompt)

    def forward(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """-> per-token logits ``object`` (B x T x 2), ``slot`` (B x T x slots), one per slot head
        (B x T x n-1), per global head (B x n), and the token ``mask`` (B x T)."""
        tokens, mask, pooled = self.encoder(prompts)
        out = {"object": self.is_object(tokens), "slot": self.slot(tokens), "mask": mask}
        out.update({k: head(tokens) for k, head in self.heads.items()})
        out.update({k: head(pooled) for k, head in self.global_out.items()})
        return out

    @torch.no_grad()
    def probabilities(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per slot head ``B x slots x n`` (class 0 = empty), per global head ``B x n``."""
        if not self.grammar:
            return self._network_probabilities(prompts)
        exact = [_grammar_layout(p, self.slot_heads, self.global_heads) for p in prompts]
        rest = [i for i, e in enumerate(exact) if e is None]  # only these go through the network
        net = self._network_probabilities([prompts[i] for i in rest]) if rest else {}
        device = self.is_object.weight.device
        out = {}
        for k in (*self.slot_heads, *self.global_heads):
            rows = [e[k].to(device) if e is not None else None for e in exact]
            for j, i in enumerate(rest):
                rows[i] = net[k][j]
            out[k] = torch.stack(rows)
        return out

    def _network_probabilities(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self._assemble(self(prompts))

    def _assemble(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-token logits -> per-slot probabilities (the objects the tokens put in each slot)."""
        mask = logits["mask"]
        p_obj = logits["object"].float().softmax(-1)[..., 1] * mask  # B x T
        w = p_obj[..., None] * logits["slot"].float().softmax(-1)  # B x T x S: object t sits in slot s
        occupied = w.sum(1).clamp(max=1.0)  # B x S
        share = w / w.sum(1, keepdim=True).clamp(min=1e-6)  # which tokens fill slot s
        out = {}
        for k in self.slot_heads:
            attr = torch.einsum("bts,btn->bsn", share, logits[k].float().softmax(-1))
            out[k] = torch.cat([(1 - occupied)[..., None], occupied[..., None] * attr], -1)
        out.update({k: logits[k].float().softmax(-1) for k in self.global_heads})
        return out

    @torch.no_grad()
    def parse(self, prompts: list[str]) -> list[dict[str, Any]]:
        """Readable parses: per prompt, ``{"objects": [(slot, {head: class}), ...], head: class}``."""
        probs = self.probabilities(prompts)
        first = next(iter(self.slot_heads))
        out = []
        for b in range(len(prompts)):
            objects = []
            for s in range(self.slots):
                labels = {k: int(probs[k][b, s].argmax()) for k in self.slot_heads}
                if labels[first] != 0:
                    objects.append((s, labels))
            out.append({"objects": objects, **{k: int(probs[k][b].argmax()) for k in self.global_heads}})
        return out

    # -- training -------------------------------------------------------------------------------

    def targets(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-slot targets (the scene's labels; class 0 = empty) and the background only where the
        caption names it (else 0): what the generator's layout is in training."""
        device = self.is_object.weight.device
        out = {k: torch.as_tensor(batch[k], device=device).long() for k in self.slot_heads}
        if "background" in self.global_heads:
            said = [caption_background(c) for c in batch["caption"]]
            out["background"] = torch.tensor([0 if s is None else s + 1 for s in said], device=device)
        return out

    def token_targets(self, captions: list[str], width: int) -> dict[str, torch.Tensor]:
        """Per token (B x width, -100 = not scored): ``object`` 1 at the last token of each newly
        mentioned object's noun, else 0; its ``slot`` and attributes (class - 1) there only."""
        keys = ["object", "slot", *self.slot_heads]
        out = {k: torch.full((len(captions), width), -100, dtype=torch.long) for k in keys}
        tok = self.encoder.tokenizer
        for b, caption in enumerate(captions):
            scene = parse_caption(caption)
            n = min(len(tok.encode(caption)) + 2, width)
            out["object"][b, :n] = 0
            if scene is None:
                continue
            labels = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}
            for end, obj in zip(mention_ends(caption), scene.objects, strict=True):
                t = len(tok.encode(caption[:end]))  # index of the noun's last token (0 is <start>)
                if t >= width:
                    continue
                out["object"][b, t] = 1
                out["slot"][b, t] = obj.slot
                for k in self.slot_heads:
                    out[k][b, t] = labels[k].index(getattr(obj, k))
        return out

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        captions = list(batch["caption"])
        logits = self(captions)
        width = logits["mask"].shape[1]
        device = logits["mask"].device
        tags = {k: v.to(device) for k, v in self.token_targets(captions, width).items()}
        loss = sum(F.cross_entropy(logits[k].float().flatten(0, 1), t.flatten(), ignore_index=-100)
                   for k, t in tags.items())  # fmt: skip
        glob = self.targets(batch)
        loss = loss + sum(F.cross_entropy(logits[k].float(), glob[k]) for k in self.global_heads)
        with torch.no_grad():
            probs = self._assemble({k: v.detach() for k, v in logits.items()})  # no second forward
            right = {k: probs[k].argmax(-1) == t for k, t in glob.items()}
            exact = torch.stack([right[k].reshape(len(captions), -1).all(1) for k in right]).all(0)
        logs = {"ce": loss.detach(), "exact": exact.float().mean()}
        logs.update({f"acc_{k}": r.float().mean() for k, r in right.items()})
        return loss, logs

    def evaluate(
        self, dataset, device: str | torch.device = "cpu", batch_size: int = 256
    ) -> dict[str, float]:
        return validation_loss(self, dataset, device, batch_size)


def _grammar_layout(prompt: str, slot_heads: dict, global_heads: dict) -> dict[str, torch.Tensor] | None:
    """One-hot layout of a prompt the caption grammar parses; None when it does not."""
    scene = parse_caption(prompt)
    if scene is None or not scene.objects:
        return None
    labels = labels_from_scene(scene)
    out = {k: F.one_hot(labels[k], n).float() for k, n in slot_heads.items()}
    if "background" in global_heads:
        said = caption_background(prompt)
        out["background"] = F.one_hot(
            torch.tensor(0 if said is None else said + 1), global_heads["background"]
        ).float()
    return out


__all__ = ["PromptParser", "SHAPES_GLOBAL_HEADS", "SHAPES_SLOT_HEADS"]
