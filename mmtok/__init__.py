"""mmtok: multimodal generation and grounding on shared visual and text tokenizers.

Public API::

    import mmtok
    mmtok.list_models()            # named checkpoints under weights/ (or $MMTOK_WEIGHTS)
    model = mmtok.load("judge-shapes64")
    mmtok.save(model, "my-folder")
"""

__version__ = "0.1.0"

from .errors import MmtokError  # noqa: E402
from .hub import list_models, load, save  # noqa: E402

__all__ = ["MmtokError", "__version__", "list_models", "load", "save"]
