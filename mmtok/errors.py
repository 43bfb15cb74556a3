"""User-facing errors.

`MmtokError` carries one line that says what is wrong and what to do. The CLI prints it and exits 2
with no traceback; the web UI shows it as ``gr.Error``. Anything else that escapes is a bug (exit 1).
"""


class MmtokError(Exception):
    """Bad user input or environment: one line, actionable."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep it to one line whatever the caller passed (paths or library messages may hold newlines).
        super().__init__(" ".join(str(message).split()))


class InputError(MmtokError):
    """An input file, value or prompt is invalid."""


class ConfigError(MmtokError):
    """A YAML config has an unknown key or a bad value."""


class CheckpointError(MmtokError):
    """A checkpoint is missing, corrupt or does not match its model."""
