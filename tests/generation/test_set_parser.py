"""scripts/set_parser.py: a trained parser put into a layout generator, config and tensors together."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mmtok import hub
from mmtok.errors import CheckpointError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "set_parser.py"
SMALL = {"dim": 32, "heads": 2, "embed_dim": 16, "layers": 1}


def _script():
    spec = importlib.util.spec_from_file_location("set_parser", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_parser_replaces_the_placeholder_with_its_vocabulary_and_config(tmp_path):
    from mmtok.generation.parser import PromptParser
    from mmtok.generation.xar import XAR

    torch.manual_seed(0)
    gen = XAR(dim=32, depth=1, heads=2, grid=8, patch=2, text_encoder="slots", text_length=24, parser=SMALL)
    hub.save(gen, tmp_path / "gen", dtype=torch.bfloat16)
    before = {k: v.to(torch.bfloat16).float() for k, v in gen.state_dict().items()}
    parser = PromptParser(
        length=24, compact_vocab=True, **SMALL
    )  # another embedding size than the placeholder
    hub.save(parser, tmp_path / "parser")
    n = _script().set_parser(tmp_path / "gen", tmp_path / "parser")
    assert n == len(parser.state_dict())
    loaded = hub.load(str(tmp_path / "gen"))
    assert loaded.text.encoder.embed.weight.shape[0] < 200
    assert json.loads((tmp_path / "gen" / "config.json").read_text())["parser"]["compact_vocab"] is True
    for k, v in parser.state_dict().items():  # kept in the parser's own dtype (fp32), not bf16
        assert torch.equal(loaded.text.state_dict()[k], v)
    for k, v in before.items():  # everything but the parser is untouched
        if not k.startswith("text."):
            assert torch.equal(loaded.state_dict()[k], v), k
    loaded.text.grammar = parser.grammar = False  # read by the network, not the grammar
    prompt = ["a small red star in the top left and a big cyan ring below it"]
    a, b = loaded.text.probabilities(prompt)["shape"], parser.eval().probabilities(prompt)["shape"]
    assert torch.allclose(a, b, atol=1e-5)


def test_set_parser_refuses_what_does_not_go_together(tmp_path):
    from mmtok.generation.parser import PromptParser
    from mmtok.generation.xar import XAR

    hub.save(
        XAR(dim=32, depth=1, heads=2, grid=8, text_length=24, text_dim=8, text_layers=1), tmp_path / "tok"
    )
    gen = XAR(dim=32, depth=1, heads=2, grid=8, text_encoder="slots", text_length=24, parser=SMALL)
    hub.save(gen, tmp_path / "gen")
    hub.save(PromptParser(length=48, **SMALL), tmp_path / "long")
    script = _script()
    with pytest.raises(CheckpointError, match="not a layout xAR"):
        script.set_parser(tmp_path / "tok", tmp_path / "long")
    with pytest.raises(CheckpointError, match="not a PromptParser"):
        script.set_parser(tmp_path / "gen", tmp_path / "tok")
    with pytest.raises(CheckpointError, match="48 tokens"):
        script.set_parser(tmp_path / "gen", tmp_path / "long")
    assert script.main([str(tmp_path / "gen"), str(tmp_path / "nowhere")]) == 2
