"""Token compressors in the CLIP image tower: kept counts, index maps, exactness at keep 1, ToMe's size
bookkeeping, TCC's density and budgets, proportional attention with padding, keep-map image."""

import copy

import pytest
import torch

from mmtok.clip.model import LightCLIP
from mmtok.compression.base import Identity, TowerRunner, budget, keep_map_image, select
from mmtok.compression.baselines import AttentionRank, Pool2x2, RandomDrop, pool_grid
from mmtok.compression.explain import (
    ExplainCompressor,
    ExplainPredictor,
    attention_features,
    chefer_relevance,
)
from mmtok.compression.tcc import TCC, encode_multicrop, iqr_outliers, key_density, multicrop
from mmtok.compression.tome import ToMe
from mmtok.errors import InputError

KEEPS = (1.0, 0.75, 0.5, 0.25, 0.1)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return LightCLIP(arch="lightclip-vit-p8-64").eval()  # the shipped tower's architecture, random weights


@pytest.fixture(scope="module")
def runner(clip):
    return TowerRunner(clip.clip.visual)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    x[0] = -0.8  # a flat image: every patch repeats
    return x


def _compressors():
    torch.manual_seed(0)
    pred = ExplainPredictor(heads=4, width=8, depth=2)
    return {
        "tcc": TCC(1),
        "tcc-sample": TCC(2, select="sample"),
        "tcc-drop": TCC(1, recycle="none", importance="received"),
        "tcc-merge": TCC(1, recycle="merge", importance="query"),
        "tome": ToMe(1),
        "random@0": RandomDrop(0),
        "random@3": RandomDrop(3),
        "random-drop@0": RandomDrop(0, recycle="none"),
        "pool@0": Pool2x2(0),
        "pool@1": Pool2x2(1),
        "attn@0": AttentionRank(0),
        "explain": ExplainCompressor(pred.eval()),
        "identity": Identity(),
    }


COMPRESSORS = _compressors()


def test_runner_without_compressor_is_the_tower(clip, runner, images):
    with torch.no_grad():
        assert torch.equal(runner(images).pooled, clip.clip.visual(images))


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_keep_one_reproduces_the_full_tower_exactly(name, clip, runner, images):
    with torch.no_grad():
        out = runner(images, COMPRESSORS[name], 1.0)
        assert torch.equal(out.pooled, clip.clip.visual(images))
    assert out.tokens.shape[1] == 64


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("name", [n for n in COMPRESSORS if n != "identity"])
def test_kept_counts_and_index_maps(name, keep, runner, images):
    with torch.no_grad():
        out = runner(images, COMPRESSORS[name], keep)
    c = out.compressed
    n = c.tokens.shape[1]
    if name.startswith("pool"):
        gh, gw = pool_grid(8, 8, budget(64, keep))
        assert n == gh * gw <= budget(64, keep)
    else:
        assert n == budget(64, keep)
    assert c.index.shape == (4, n) and c.source.shape == (4, 64) and c.sizes.shape == (4, n)
    for row_index, row_source in zip(c.index, c.source, strict=True):
        assert len(set(row_index.tolist())) == n  # unique
        assert 0 <= int(row_index.min()) and int(row_index.max()) < 64
        assert int(row_source.min()) >= -1 and int(row_source.max()) < n
        assert set(row_source[row_source >= 0].tolist()) == set(range(n))  # every output slot is used
    if name.startswith(("tome", "pool")):  # merging: every input token lands somewhere
        assert bool((c.source >= 0).all())
        if name.startswith("tome"):
            assert torch.equal(c.sizes.sum(1), torch.full((4,), 64.0))
        return
    slots = torch.arange(n).expand(4, -1)
    assert torch.equal(c.source.gather(1, c.index), slots)  # pruning: kept tokens map to themselves
    assert torch.equal(c.extra["dropped"].sum(1), torch.full((4,), 64 - n))
    assert not bool(c.extra["dropped"].gather(1, c.index).any())
    if "drop" in name:  # plain dropping
        assert int((c.source[0] >= 0).sum()) == n
        assert torch.equal(c.sizes, torch.ones(4, n))
    else:  # dropped tokens' area recycled into their nearest kept token: sizes count the patches
        assert bool((c.source >= 0).all())
        assert torch.equal(c.sizes.sum(1), torch.full((4,), 64.0))
        for b in range(4):
            assert torch.equal(torch.bincount(c.source[b], minlength=n).float(), c.sizes[b])
    assert torch.isfinite(out.pooled).all()


def test_tome_merges_are_size_weighted_means_and_conserve_sizes():
    torch.manual_seed(0)
    tokens = torch.randn(3, 64, 16)
    keys = torch.randn(3, 2, 64, 8)
    from mmtok.compression.base import AttnInfo

    for keep in (0.75, 0.5, 0.25, 0.1):  # < 0.5 takes several rounds
        c = ToMe(1).compress(tokens, AttnInfo(None, keys, None), keep)
        assert c.tokens.shape[1] == budget(64, keep)
        assert torch.equal(c.sizes.sum(1), torch.full((3,), 64.0))
        for b in range(3):
            counts = torch.bincount(c.source[b], minlength=c.tokens.shape[1]).float()
            assert torch.equal(counts, c.sizes[b])
            means = torch.zeros_like(c.tokens[b]).index_add_(0, c.source[b], tokens[b]) / counts[:, None]
            torch.testing.assert_close(c.tokens[b], means, rtol=1e-5, atol=1e-5)
            # each merged token's representative is one of its own input tokens
            assert torch.equal(c.source[b][c.index[b]], torch.arange(c.tokens.shape[1]))


def test_key_density_extremes():
    same = torch.ones(2, 2, 16, 4)
    assert torch.equal(key_density(same, 0.9), torch.zeros(2))
    orth = torch.eye(16).expand(2, 1, 16, 16)  # one head, orthogonal keys: nothing repeats
    assert torch.equal(key_density(orth, 0.9), torch.ones(2))
    half = orth.clone()
    half[:, :, 8:] = half[:, :, :8]  # every token has an exact twin
    assert torch.equal(key_density(half, 0.9), torch.zeros(2))


def test_tcc_budget_is_monotone_in_density():
    density = torch.linspace(0, 1, 11)
    for mode in ("density", "shared"):
        counts = TCC(1, budget=mode).budgets(density, 64, 0.5)
        assert bool((counts[1:] >= counts[:-1]).all()), mode
        assert int(counts.min()) >= 1 and int(counts.max()) <= 64
    assert int(TCC(1, budget="density").budgets(density, 64, 0.5).max()) <= 32  # keep is the cap
    assert int(TCC(1, budget="shared").budgets(density, 64, 0.5).sum()) == 32 * 11  # total kept
    assert TCC(1).budgets(density, 64, 0.5).tolist() == [32] * 11


def test_tcc_keeps_attention_outliers_and_flat_images_are_redundant(runner, images):
    with torch.no_grad():
        out = runner(images, TCC(1, tau=0.99), 0.25)
    extra = out.compressed.extra
    assert float(extra["density"][0]) < 0.2  # the flat image: position embeddings only
    outliers = iqr_outliers(extra["importance"])
    for b in range(4):
        kept = set(out.compressed.index[b].tolist())
        assert set(outliers[b].nonzero().flatten().tolist()) <= kept or int(outliers[b].sum()) > 16
    a = torch.tensor([[1.0] * 15 + [100.0]])
    assert iqr_outliers(a).tolist() == [[False] * 15 + [True]]


def test_tcc_sampling_is_seeded_and_differs_from_topk(runner, images):
    with torch.no_grad():
        a = runner(images, TCC(1, select="sample", seed=3), 0.5).compressed.index
        b = runner(images, TCC(1, select="sample", seed=3), 0.5).compressed.index
        c = runner(images, TCC(1, select="topk"), 0.5).compressed.index
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_padding_with_zero_sizes_equals_running_each_image_alone(runner, images):
    """Density budgets differ per image: the batch is padded (size 0 -> -inf attention bias, weight 0 in
    the pool); each image's embedding must equal the one it gets alone."""
    tcc = TCC(1, budget="density", tau=0.99)
    with torch.no_grad():
        batch = runner(images, tcc, 0.75)
        counts = batch.compressed.extra["counts"]
        assert len(set(counts.tolist())) > 1  # really padded
        for i in range(len(images)):
            alone = runner(images[i : i + 1], tcc, 0.75)
            assert alone.tokens.shape[1] == int(counts[i])
            torch.testing.assert_close(batch.pooled[i], alone.pooled[0], rtol=1e-4, atol=1e-5)


def test_proportional_attention_counts_a_merged_token_as_its_copies(runner):
    """Two identical tokens (sizes 1, 1) and one token of size 2 give the same tower output."""
    torch.manual_seed(0)
    x = torch.randn(1, 5, 128)
    dup = torch.cat([x, x[:, -1:]], 1)
    block = runner.trunk.blocks[0]
    with torch.no_grad():
        a, _ = runner.run_block(block, dup)
        b, _ = runner.run_block(block, x, sizes=torch.tensor([[1.0, 1, 1, 1, 2]]))
        pa, _ = runner.head(a, None)
        pb, _ = runner.head(b, torch.tensor([[1.0, 1, 1, 1, 2]]))
    torch.testing.assert_close(a[:, :5], b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_pool_is_2x2_average_at_a_quarter():
    assert pool_grid(8, 8, 16) == (4, 4) and pool_grid(8, 8, 48) in ((6, 8), (8, 6))
    assert pool_grid(8, 8, 6) in ((2, 3), (3, 2)) and pool_grid(8, 8, 32) in ((4, 8), (8, 4))
    tokens = torch.randn(2, 64, 8)
    c = Pool2x2(0).compress(tokens, None, 0.25)
    grid = tokens.view(2, 8, 8, 8)
    expect = grid.view(2, 4, 2, 4, 2, 8).mean((2, 4)).reshape(2, 16, 8)
    torch.testing.assert_close(c.tokens, expect)
    assert torch.equal(c.sizes, torch.full((2, 16), 4.0))


def test_select_handles_padding_rows():
    tokens = torch.arange(2 * 6 * 1, dtype=torch.float).view(2, 6, 1)
    index = torch.tensor([[4, 1, 0], [5, 2, 3]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    c = select(tokens, index, valid=valid)
    assert c.index[0, :2].tolist() == [1, 4] and c.sizes[0].tolist() == [1, 1, 0]
    assert c.source[0].tolist() == [-1, 0, -1, -1, 1, -1]
    assert c.source[1].tolist() == [-1, -1, 0, 1, -1, 2]


def test_keep_bounds_and_layer_checks(runner, images):
    for keep in (0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(InputError):
            runner(images, TCC(1), keep)
    with pytest.raises(InputError):
        TCC(0)
    with pytest.raises(InputError):
        runner(images, RandomDrop(9), 0.5)


def test_larger_inputs_interpolate_position_embeddings(runner):
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        full = runner(x)
        out = runner(x, TCC(1), 0.5)
    assert full.tokens.shape[1] == 256 and full.grid == (16, 16)
    assert out.tokens.shape[1] == 128


def test_keep_map_image(runner, images):
    with torch.no_grad():
        out = runner(images, RandomDrop(0), 0.5)
    c = out.compressed
    img = keep_map_image(images[1], c.source[1], out.grid, scale=2, dropped=c.extra["dropped"][1])
    assert img.shape == (128, 128, 3) and img.dtype.name == "uint8"
    dropped = int(c.extra["dropped"][1].nonzero()[0])
    r, c = divmod(dropped, 8)
    tile = img[r * 16 + 4 : r * 16 + 12, c * 16 + 4 : c * 16 + 12].astype(float)
    source = ((images[1] + 1) * 127.5).permute(1, 2, 0).numpy()
    orig = source[r * 8 + 2 : r * 8 + 6, c * 8 + 2 : c * 8 + 6]
    assert abs(tile.mean() - orig.mean()) > 10  # marked
    # Dropped patches show on a black and on a white image alike (dimming alone vanishes on black).
    for value, darker in ((-1.0, False), (1.0, True)):
        flat = keep_map_image(torch.full_like(images[1], value), out.compressed.source[1], out.grid,
                              scale=2, dropped=out.compressed.extra["dropped"][1])  # fmt: skip
        marked = flat[r * 16 + 4 : r * 16 + 12, c * 16 + 4 : c * 16 + 12].astype(float).mean()
        plain = 255.0 * (value > 0)
        assert (marked < plain - 60) if darker else (marked > plain + 15), (value, marked)


def test_multicrop_layout_and_shared_budget(runner):
    page = torch.ones(3, 100, 150)
    page[:, 10:60, 10:140] = -1
    view, tiles, layout = multicrop(page, 64)
    assert view.shape == (1, 3, 64, 64) and tiles.shape == (6, 3, 64, 64) and layout == (2, 3)
    out = encode_multicrop(runner, page, 0.5, crop=64)
    assert int(out["counts"].sum()) == 32 * 6 and out["embeds"].shape == (7, 128)
    assert out["global_count"] == 32


def test_explain_predictor_any_grid_and_training_step(clip, runner, images):
    torch.manual_seed(0)
    pred = ExplainPredictor(heads=4, width=8, depth=3)
    with torch.no_grad():
        x, grid = runner.embed(images)
        probs = runner.attention_probs(runner.trunk.blocks[0], x).probs
    assert attention_features(probs, grid).shape == (4, 16, 8, 8)
    assert pred(probs, grid).shape == (4, 64)
    big = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        xb, gb = runner.embed(big)
        assert pred(runner.attention_probs(runner.trunk.blocks[0], xb).probs, gb).shape == (1, 256)
    text = clip.encode_text(["a red circle"] * 4)["embeds"]
    rel = chefer_relevance(clip, images, text)
    assert rel.shape == (4, 64) and bool((rel >= 0).all()) and torch.isfinite(rel).all()
    pred._teacher.append(clip)  # no name lookup: the test's CLIP is the teacher
    loss, logs = pred.training_step({"image": images, "caption": ["a red circle"] * 4})
    loss.backward()
    assert torch.isfinite(loss) and loss >= -1e-5 and 0 <= logs["top25"] <= 1
    assert all(p.grad is not None for p in pred.parameters())
    assert not any(p.requires_grad and p.grad is not None for p in clip.parameters())
    twin = copy.deepcopy(pred)  # what the trainer's EMA does
    assert twin._teacher[0] is clip
    for a, b in zip(twin.state_dict().values(), pred.state_dict().values(), strict=True):
        assert torch.equal(a, b)
