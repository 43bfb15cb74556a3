"""Latent cache: build once, reopen, keyed by tokenizer + dataset, corrupt caches refused/rebuilt."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mmtok.data import build_dataset
from mmtok.data.latents import CachedLatentDataset, LatentCache, cached_dataset, tokenizer_hash
from mmtok.errors import CheckpointError, ConfigError

SHAPES = {"size": 10, "resolution": 32}  # 10 captioned 32x32 scenes; batch 4 -> 3 encode calls


class TinyKL(nn.Module):
    """A real (tiny) continuous tokenizer: 1x1 conv to 4 channels, then 4x4 average pooling."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(4, 3, 1, 1, generator=gen))
            self.proj.bias.zero_()
        self.calls = 0

    @property
    def config(self) -> dict:
        return {"channels": 4, "factor": 4}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.avg_pool2d(self.proj(images), 4)


class TinyBinary(TinyKL):
    """Discrete: the 4 latent signs per position as 2 sub-tokens of 2 bits each (B x h x w x 2)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        bits = (super().encode(images) > 0).long().permute(0, 2, 3, 1)
        return (bits.unflatten(-1, (2, 2)) * torch.tensor([1, 2])).sum(-1)


def build(tok, root, **kwargs):
    options = {"batch_size": 4, "progress": False, **SHAPES, **kwargs}
    return cached_dataset(tok, "shapes", "test", root, **options)


def same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def caches(root):
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("tok_class,key", [(TinyKL, "latent"), (TinyBinary, "codes")])
def test_build_then_open_equals_encoding_on_the_fly(tmp_path, tok_class, key):
    tok = tok_class()
    ds = build(tok, tmp_path)
    source = build_dataset("shapes", "test", **SHAPES)
    expected = tok.encode(torch.stack([source[i]["image"] for i in range(len(source))]))
    assert len(ds) == 10 and ds.cache.kind == key
    reopened = CachedLatentDataset(LatentCache.open(tmp_path))  # the root's only cache
    for i in range(len(ds)):
        item, again, real = ds[i], reopened[i], source[i]
        assert set(item) == {key, "shape", "colour", "size", "caption", "n_objects", "background"}
        torch.testing.assert_close(item[key], expected[i], rtol=0, atol=1e-6)
        assert item[key].dtype == (torch.float32 if key == "latent" else torch.long)
        assert item["caption"] == real["caption"] and isinstance(item["caption"], str)
        assert item["n_objects"] == real["n_objects"] and isinstance(item["n_objects"], int)
        assert torch.equal(item["shape"], real["shape"]) and item["shape"].dtype == torch.long
        assert all(same(again[k], item[k]) for k in item)
    assert ds[-1]["caption"] == source[9]["caption"]
    with pytest.raises(IndexError):
        ds[10]
    batch = next(iter(DataLoader(ds, batch_size=5)))  # the default collate works
    expected_shape = (5, 4, 8, 8) if key == "latent" else (5, 8, 8, 2)
    assert batch[key].shape == expected_shape and len(batch["caption"]) == 5


def test_cache_hit_does_not_encode_and_changed_weight_rebuilds(tmp_path):
    tok = TinyKL()
    first = build(tok, tmp_path)
    assert tok.calls == 3
    second = build(tok, tmp_path)
    assert tok.calls == 3 and second.cache.folder == first.cache.folder  # hit: no encode call
    assert build(TinyKL(), tmp_path).cache.folder == first.cache.folder  # same config + weights
    with torch.no_grad():
        tok.proj.bias[0] += 1e-3
    rebuilt = build(tok, tmp_path)
    assert tok.calls == 6 and rebuilt.cache.folder != first.cache.folder
    assert rebuilt.cache.tokenizer_hash == tokenizer_hash(tok) != first.cache.tokenizer_hash
    assert not torch.equal(rebuilt[0]["latent"], first[0]["latent"])
    # Another dataset option or split is another cache too.
    build(tok, tmp_path, seed=1)
    assert tok.calls == 9 and len(caches(tmp_path)) == 3
    with pytest.raises(CheckpointError, match="3 latent caches .* pass one cache folder"):
        LatentCache.open(tmp_path)


def test_tokenizer_hash_covers_config_dtype_and_weights():
    a, b = TinyKL(), TinyKL()
    assert tokenizer_hash(a) == tokenizer_hash(b) != tokenizer_hash(TinyKL(seed=1))
    assert tokenizer_hash(b.to(torch.bfloat16)) != tokenizer_hash(a)  # bf16 weights hash too
    assert tokenizer_hash(TinyBinary()) != tokenizer_hash(a)  # the class is part of it


def test_files_are_npy_and_json_only_and_load_without_pickle(tmp_path):
    folder = build(TinyKL(), tmp_path).cache.folder
    names = sorted(p.name for p in folder.iterdir())
    fields = ["background", "caption", "colour", "n_objects", "shape", "size"]
    assert names == sorted(["meta.json", "latents.npy", *(f"field-{k}.npy" for k in fields)])
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "latent" and meta["shape"] == [4, 8, 8] and meta["count"] == 10
    assert meta["dataset"]["name"] == "shapes" and meta["dataset"]["options"]["resolution"] == 32
    for name in names[:-1]:
        assert np.load(folder / name, allow_pickle=False).shape[0] == 10
    assert np.load(folder / "field-caption.npy", allow_pickle=False).dtype.kind == "U"


def test_corrupt_cache_raises_on_open_and_is_rebuilt_by_build(tmp_path):
    tok = TinyKL()
    good = build(tok, tmp_path)
    folder, latents = good.cache.folder, good.cache.folder / "latents.npy"
    expected = good[3]["latent"]
    os.truncate(latents, latents.stat().st_size - 100)  # a write cut short
    with pytest.raises(CheckpointError, match="incomplete or corrupt: latents.npy is") as info:
        LatentCache.open(folder)
    assert "\n" not in str(info.value)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = build(tok, tmp_path)
    assert tok.calls == 6 and rebuilt.cache.folder == folder
    assert torch.equal(rebuilt[3]["latent"], expected)
    # Same size, flipped bytes: only the sha256 check (verify=True) sees it.
    data = bytearray(latents.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"
    latents.write_bytes(bytes(data))
    LatentCache.open(folder)
    with pytest.raises(CheckpointError, match="sha256"):
        LatentCache.open(folder, verify=True)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="no readable meta.json"):
        LatentCache.open(folder)


def test_killed_build_leaves_only_an_ignored_temp_folder(tmp_path):
    # What `kill -9` mid-build leaves behind: a dot temp folder with part of the data and no meta.json.
    partial = tmp_path / ".tmp-shapes-test-0123456789abcdef-x1y2"
    partial.mkdir()
    np.lib.format.open_memmap(partial / "latents.npy", mode="w+", dtype=np.float32, shape=(10, 4, 8, 8))
    with pytest.raises(CheckpointError, match="no latent cache at"):
        LatentCache.open(tmp_path)
    tok = TinyKL()
    ds = build(tok, tmp_path)
    assert tok.calls == 3 and LatentCache.open(tmp_path).folder == ds.cache.folder

    class Crashing(TinyKL):  # an encoder that dies mid-dataset: nothing half-written is left
        def encode(self, images):
            if self.calls == 1:
                raise RuntimeError("out of memory")
            return super().encode(images)

    with pytest.raises(RuntimeError, match="out of memory"):
        build(Crashing(seed=2), tmp_path)
    assert caches(tmp_path) == [ds.cache.folder]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [partial.name]


def test_keys_and_bad_inputs(tmp_path):
    ds = build(TinyKL(), tmp_path, keys=("caption",))
    assert set(ds[0]) == {"latent", "caption"}
    with pytest.raises(ConfigError, match="cannot copy field 'label'"):
        build(TinyKL(), tmp_path, keys=("label",))
    with pytest.raises(ConfigError, match="batch_size"):
        build(TinyKL(), tmp_path, batch_size=0)

    class Flat(TinyKL):
        def encode(self, images):
            return super().encode(images).flatten(1)

    with pytest.raises(ConfigError, match="expected float B x C x h x w latents"):
        build(Flat(), tmp_path)
    assert len(caches(tmp_path)) == 1
