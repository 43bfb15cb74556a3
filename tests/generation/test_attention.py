"""The shared attention pieces: the bf16 CPU inference path and the preallocated KV cache."""

import torch
import torch.nn.functional as F

from mmtok.nn.attention import KVCache, SelfAttention, attention


def _qkv(B=32, H=4, Lq=3, Lk=9, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g).to(dtype) for L in (Lq, Lk, Lk)]


def test_bf16_cpu_path_matches_fp32_attention_with_a_mask():
    q, k, v = _qkv()
    mask = torch.rand(32, 1, 3, 9, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True  # every row keeps one key
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.no_grad():
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05
    # Masked keys get no weight: changing their values changes nothing.
    keys = mask[:, :, :1]  # B x 1 x 1 x Lk, a key-padding mask
    v2 = v + 100 * (~keys).transpose(-1, -2)
    with torch.no_grad():
        out1 = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), keys)
        out2 = attention(q.bfloat16(), k.bfloat16(), v2.bfloat16(), keys)
    assert torch.equal(out1, out2)


def test_training_keeps_the_fused_kernel_and_its_gradients():
    q, k, v = (t.bfloat16().requires_grad_() for t in _qkv())
    out = attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, ref)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad.float()).all()


def test_cache_write_read_grow_and_keep():
    cache = KVCache(capacity=2)
    k1, v1 = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    cache.writing = True
    k, v = cache.extend(0, k1, v1)  # grows past the capacity
    assert len(cache) == 3 and torch.equal(k, k1) and torch.equal(v, v1)
    cache.writing = False
    k2, v2 = torch.randn(2, 1, 2, 4), torch.randn(2, 1, 2, 4)
    k, v = cache.extend(0, k2, v2)  # read-only: attends to cache + own tokens
    assert torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2))
    assert len(cache) == 3
    k3 = torch.randn(2, 1, 1, 4)
    k, _ = cache.extend(0, k3, k3)  # the scratch slots of the read-only pass are overwritten
    assert torch.equal(k, torch.cat([k1, k3], 2))
    cache.writing = True
    tree = torch.randn(2, 1, 4, 4)
    cache.extend(0, tree, tree)
    cache.keep(3, torch.tensor([0, 2]))  # keep nodes 0 and 2 of a 4-node tree
    assert len(cache) == 5
    assert torch.equal(cache.keys[0][:, :, :5], torch.cat([k1, tree[:, :, [0, 2]]], 2))


def test_cached_decoding_equals_full_attention_under_bf16():
    """Token by token through a cache (bf16 CPU path) = one causal pass (fused kernel), to bf16
    precision."""
    torch.manual_seed(0)
    layer = SelfAttention(64, 4)
    x = torch.randn(32, 10, 64)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = layer(x, causal)
        cache = KVCache(capacity=10)
        cache.writing = True
        steps = torch.cat([layer(x[:, i : i + 1], None, cache) for i in range(10)], 1)
    assert (full.float() - steps.float()).abs().max() < 0.05
