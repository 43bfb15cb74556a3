"""Security checks: no unpickling or code evaluation in the code base (an AST scan), and a web UI that
binds to this machine by default, refuses uploads over its limit and serves no file outside its folders."""

import ast
import inspect
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from reliability_helpers import REPO

SOURCES = sorted([*(REPO / "mmtok").rglob("*.py"), *(REPO / "apps").rglob("*.py")])
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
BANNED_CALLS = {"eval", "exec", "__import__"}


def _keyword(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "not a constant"
    return None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        where = (
            f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{getattr(node, 'lineno', 0)}"
        )
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            bad = {n.split(".")[0] for n in names if n} & BANNED_MODULES
            if bad:
                found.append(f"{where}: imports {', '.join(sorted(bad))}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in BANNED_CALLS:
            found.append(f"{where}: calls {name}()")
        elif name == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{where}: np.load with allow_pickle")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            found.append(f"{where}: {name} (use yaml.safe_load)")
        elif _keyword(node, "trust_remote_code") not in (None, False):
            found.append(f"{where}: trust_remote_code")
    return found


def test_no_unpickling_or_code_evaluation_anywhere():
    assert len(SOURCES) > 30
    problems = [f for path in SOURCES for f in findings(path)]
    assert problems == []


def test_the_scan_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import pickle\nimport torch, yaml, numpy as np\nfrom marshal import loads\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\ntorch.load('x', weights_only=True)\n"
        "eval('1')\nexec('x = 1')\nyaml.load('a')\nnp.load('a', allow_pickle=True)\n"
    )
    found = findings(bad)
    assert len(found) == 8, found


def test_the_ui_binds_to_this_machine_by_default():
    from apps import gradio_app
    from mmtok.cli import build_parser

    assert inspect.signature(gradio_app.launch).parameters["host"].default == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _multipart(name: str, content: bytes) -> tuple[bytes, dict]:
    boundary = "mmtok-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def server():
    """The real ``launch()`` on a free port (its upload limit lowered to 64 kB so a test can exceed it)."""
    from apps import gradio_app

    assert gradio_app.MAX_UPLOAD.endswith(("kb", "mb")) and int(gradio_app.MAX_UPLOAD[:-2]) <= 1024
    limit, gradio_app.MAX_UPLOAD = gradio_app.MAX_UPLOAD, "64kb"
    port = _free_port()
    try:
        _, local_url, share_url = gradio_app.launch(port=port, prevent_thread_lock=True, quiet=True)
    finally:
        gradio_app.MAX_UPLOAD = limit
    yield f"http://127.0.0.1:{port}", local_url, share_url
    import gradio as gr

    gr.close_all()


def test_the_server_listens_on_localhost_only_and_shares_nothing(server):
    url, local_url, share_url = server
    assert local_url.startswith("http://127.0.0.1:") and share_url is None
    assert _request(url)[0] == 200


def test_the_ui_refuses_uploads_over_its_limit(server):
    url = server[0]
    body, headers = _multipart("small.png", b"x" * 1000)
    status, answer = _request(f"{url}/gradio_api/upload", body, headers)
    assert status == 200, answer[:300]
    (uploaded,) = json.loads(answer)
    # The upload is served back from the UI's own folder: the route works, so refusals below mean it.
    status, data = _request(f"{url}/gradio_api/file={uploaded}")
    assert status == 200 and data == b"x" * 1000
    body, headers = _multipart("large.png", b"x" * 200_000)
    status, answer = _request(f"{url}/gradio_api/upload", body, headers)
    assert status == 413, (status, answer[:300])


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        str(REPO / "README.md"),
        str(REPO / "weights" / "kl-f8-64" / "config.json"),
        str(REPO / "mmtok" / "hub.py"),
        "../../../../etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_the_ui_serves_no_file_outside_its_folders(server, target):
    url = server[0]
    for route in ("/gradio_api/file=", "/file="):
        status, body = _request(f"{url}{route}{target}")
        assert status in (400, 403, 404, 405), (route, target, status)
        assert b"root:" not in body and b"_class_name" not in body
