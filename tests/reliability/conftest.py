"""Fixtures of the reliability suite: the bad-input zoo, a tiny phantom case, a CLI runner."""

import pytest
from badfiles import image_zoo, text_zoo, volume_zoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """{"image": {...}, "volume": {...}, "text": {...}, "case": phantom case folder} of bad inputs."""
    from mmtok.grounding.phantom import make_case, write_case

    root = tmp_path_factory.mktemp("zoo")
    case = write_case(make_case(3, 0, shape=(32, 32, 48), spacing=(8.0,) * 3), root / "case")
    return {
        "image": image_zoo(root / "images"),
        "volume": volume_zoo(root / "volumes"),
        "text": text_zoo(root / "texts"),
        "case": case,
        "root": root,
    }


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (code, stdout, stderr)`` of ``mmtok.cli.main`` in this process (fast)."""
    from mmtok.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
