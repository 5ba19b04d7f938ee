"""Exceptions that the CLI turns into one clear line instead of a traceback."""


class ZscirError(Exception):
    """A user-facing error: bad input, a missing file, an unreachable model. The message says what to do.

    Args:
        message: one line in the library's own words (no command-line flags).
        setting: the keyword / config field the message is about (e.g. "skip_missing"); the CLI shows
            the flag that sets it (`--skip-missing`) after the message.
    """

    def __init__(self, message: str = "", *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class DataError(ZscirError):
    """A dataset file or image is missing, malformed or undecodable (the message names file, record and field)."""


class ModelLoadError(ZscirError):
    """A model, tokenizer or checkpoint could not be found or does not fit (the message names the shapes)."""


class MissingExtraError(ZscirError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require(module: str, extra: str):
    """Import an optional dependency or raise MissingExtraError naming the extra to install.

    Args:
        module: importable module name, e.g. "faiss".
        extra: the zscir extra that provides it, e.g. "index".
    Returns:
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{module} is not installed: pip install 'zscir[{extra}]' ({exc})") from exc


def first_line(exc: BaseException) -> str:
    """`"{type}: {first line of the message}"`: library exceptions often span many lines; ours are one."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
