"""Next-X entities: permutations, block-causal masks, group/ungroup round trips, scale pyramid."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtok.errors import ConfigError
from mmtok.tokenizers.entities import make_entities

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def entities(draw, kinds=("token", "cell", "subsample", "scale", "image")):
    """Any valid (kind, grid, size), grids up to 12 x 12."""
    kind = draw(st.sampled_from(kinds))
    if kind in ("cell", "subsample"):
        k = draw(st.integers(1, 3))
        grid = (k * draw(st.integers(1, 4)), k * draw(st.integers(1, 4)))
        return make_entities(kind, grid, k)
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    if kind != "scale" or draw(st.booleans()):
        return make_entities(kind, (H, W))
    n = draw(st.integers(0, 3))
    hs = sorted(draw(st.lists(st.integers(1, H), min_size=n, max_size=n))) + [H]
    ws = sorted(draw(st.lists(st.integers(1, W), min_size=n, max_size=n))) + [W]
    scales = [(h, w) for h, w in zip(hs, ws, strict=True)]
    scales = [s for i, s in enumerate(scales) if i + 1 == len(scales) or s != scales[i + 1]]
    return make_entities(kind, (H, W), scales)


def naive_mask(ids):
    L = len(ids)
    return torch.tensor([[bool(ids[j] <= ids[i]) for j in range(L)] for i in range(L)])


@SETTINGS
@given(entities(kinds=("token", "cell", "subsample", "image")))
def test_order_is_a_permutation_and_inverse_inverts_it(ents):
    H, W = ents.grid
    assert ents.seq_len == H * W and ents.order.dtype == torch.long
    assert torch.equal(ents.order.sort().values, torch.arange(H * W))
    assert torch.equal(ents.order[ents.inverse], torch.arange(H * W))
    assert torch.equal(ents.inverse[ents.order], torch.arange(H * W))


@SETTINGS
@given(entities())
def test_ids_sizes_slices_and_mask_agree(ents):
    ids = ents.entity_ids
    assert len(ids) == ents.seq_len == sum(ents.entity_sizes)
    assert ents.num_entities == len(ents.entity_sizes) == int(ids.max()) + 1
    assert torch.equal(torch.bincount(ids), torch.tensor(ents.entity_sizes))
    slices = ents.entity_slices()
    assert slices[0].start == 0 and slices[-1].stop == ents.seq_len
    for k, sl in enumerate(slices):
        assert (ids[sl] == k).all() and (k == 0 or slices[k - 1].stop == sl.start)
    mask = ents.block_causal_mask()
    assert mask.dtype == torch.bool and torch.equal(mask, naive_mask(ids.tolist()))
    # Block lower-triangular: full blocks on the diagonal, nothing above it.
    for i, a in enumerate(slices):
        for j, b in enumerate(slices):
            assert bool(mask[a, b].all()) if j <= i else not bool(mask[a, b].any())
    additive = ents.block_causal_mask(torch.float32)
    assert torch.equal(additive == 0, mask) and torch.isinf(additive[~mask]).all()


@SETTINGS
@given(entities(), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31))
def test_group_ungroup_round_trip(ents, batch, channels, seed):
    H, W = ents.grid
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, H, W, generator=gen)
    seq = ents.group(x)
    assert seq.shape == (batch, ents.seq_len, channels)
    assert torch.equal(ents.ungroup(seq), x)
    assert torch.allclose(ents.group(ents.ungroup(seq)), seq)
    if ents.kind == "scale":
        return
    # Gathering follows `order`; integer codes (with or without sub-tokens) take the same path.
    assert torch.equal(seq[0, :, 0], x[0, 0].flatten()[ents.order])
    codes = torch.randint(0, 1000, (batch, H, W), generator=gen)
    assert torch.equal(ents.group(codes), codes.flatten(1)[:, ents.order])
    assert torch.equal(ents.ungroup(ents.group(codes)), codes)
    sub = torch.randint(0, 16, (batch, H, W, 2), generator=gen)
    assert ents.group(sub).shape == (batch, H * W, 2)
    assert torch.equal(ents.ungroup(ents.group(sub)), sub)


@SETTINGS
@given(entities(kinds=("scale",)), st.integers(0, 2**31))
def test_scale_is_an_area_pyramid(ents, seed):
    x = torch.randn(2, 3, *ents.grid, generator=torch.Generator().manual_seed(seed))
    maps = ents.scale_maps(ents.group(x))
    assert [tuple(m.shape[-2:]) for m in maps] == list(ents.scales)
    assert torch.equal(maps[-1], x)
    for m, (h, w) in zip(maps, ents.scales, strict=True):
        assert torch.allclose(m, torch.nn.functional.adaptive_avg_pool2d(x, (h, w)), atol=1e-6)
    pos = ents.positions()
    assert torch.equal(pos.scale, ents.entity_ids)
    assert ((pos.center > 0) & (pos.center < 1)).all()


def test_scale_worked_example():
    ents = make_entities("scale", 4)
    assert ents.scales == ((1, 1), (2, 2), (4, 4)) and ents.seq_len == 1 + 4 + 16
    x = torch.arange(16.0).view(1, 1, 4, 4)
    seq = ents.group(x)[0, :, 0]
    # Coarse scales are the means of the 4x4 grid and of its 2x2 blocks (written out by hand).
    assert seq[:5].tolist() == [7.5, 2.5, 4.5, 10.5, 12.5]
    assert torch.equal(seq[5:], torch.arange(16.0))
    # Scale k's tokens are conditioned on scale k-1 upsampled; scale 0 on nothing (zeros).
    inputs = ents.next_scale_inputs(ents.group(x))[0, :, 0]
    assert inputs[0] == 0 and (inputs[1:5] == 7.5).all()
    up = torch.nn.functional.interpolate(seq[1:5].view(1, 1, 2, 2), size=(4, 4), mode="bilinear")
    assert torch.equal(inputs[5:], up.flatten())
    pos = ents.positions()
    assert pos.row[1:5].tolist() == [0, 0, 1, 1] and pos.col[1:5].tolist() == [0, 1, 0, 1]
    assert pos.center[0].tolist() == [0.5, 0.5] and pos.center[1].tolist() == [0.25, 0.25]
    assert make_entities("scale", 8).scales == ((1, 1), (2, 2), (4, 4), (8, 8))
    with pytest.raises(ValueError, match="continuous"):
        ents.group(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no token permutation"):
        _ = ents.order


# The 4x4 grid, row-major:   0  1  2  3
#                            4  5  6  7
#                            8  9 10 11
#                           12 13 14 15
WORKED = {
    ("token", None): [[i] for i in range(16)],
    ("cell", 2): [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]],
    ("subsample", 2): [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]],
    ("image", None): [list(range(16))],
}


@pytest.mark.parametrize("kind,size", list(WORKED))
def test_worked_example_4x4(kind, size):
    ents = make_entities(kind, (4, 4), size)
    assert [ents.order[sl].tolist() for sl in ents.entity_slices()] == WORKED[kind, size]
    assert ents == make_entities(kind, 4)  # the defaults on a 4x4 grid are these sizes
    pos = ents.positions()
    assert torch.equal(pos.row * 4 + pos.col, ents.order)
    assert torch.equal(pos.center, torch.stack([pos.row + 0.5, pos.col + 0.5], 1) / 4)


def test_defaults_and_caching():
    assert make_entities("cell", 16).size == 8  # xAR: 2 x 2 cells of 8 x 8 tokens
    assert make_entities("cell", 16).num_entities == 4
    assert make_entities("cell", (6, 9)).size == 1  # gcd 3 has no proper divisor but 1
    assert make_entities("subsample", 8).size == 2
    assert make_entities("scale", 6).scales == ((1, 1), (2, 2), (3, 3), (6, 6))
    assert make_entities("scale", (2, 8)).scales == ((1, 1), (1, 2), (1, 4), (2, 8))
    assert make_entities("cell", [8, 8], 4) is make_entities("cell", 8)
    assert make_entities("scale", 4, [1, 2, 4]) is make_entities("scale", (4, 4), ((1, 1), (2, 2), (4, 4)))


@pytest.mark.parametrize(
    "args,message",
    [
        (("patch", 8), "unknown entity kind 'patch'"),
        (("cell", 8, 3), "cell size 3 does not divide the 8x8 grid"),
        (("subsample", (4, 6), 4), "subsample size 4 does not divide the 4x6 grid"),
        (("cell", 8, 0), "positive integer"),
        (("cell", 8, 2.0), "positive integer"),
        (("token", 8, 2), "take no size"),
        (("token", (0, 4)), "grid must be"),
        (("token", (4, 4, 4)), "grid must be"),
        (("scale", 8, (1, 2, 4)), "last scale must be the grid 8x8"),
        (("scale", 8, (4, 2, 8)), "coarse to fine"),
        (("scale", 8, (2, 2, 8)), "coarse to fine"),
        (("scale", 8, ()), "non-empty"),
        (("scale", 8, (1, (2, 2, 2), 8)), "each scale"),
    ],
)
def test_bad_arguments_raise_config_error(args, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_entities(*args)
    assert "\n" not in str(info.value)


def test_shape_checks():
    ents = make_entities("cell", 4)
    with pytest.raises(ValueError, match="4 x 4"):
        ents.group(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="16 tokens"):
        ents.ungroup(torch.zeros(1, 9, 3))
