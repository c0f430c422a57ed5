"""zoo: a Keras 3 model zoo and benchmarking harness for choosing a CNN backbone and head."""
from zoo.backbones import BACKBONES
from zoo.heads import HEADS

__version__ = "0.1.0"


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a glob pattern, e.g. ``list_backbones("resnet*")``."""
    return BACKBONES.list(pattern)


def list_heads(pattern: str = "*") -> list[str]:
    """Registered head names matching a glob pattern."""
    return HEADS.list(pattern)


def build_model(*args, **kwargs):
    """Assemble a backbone and a head; see :func:`zoo.factory.build_model`."""
    from zoo.factory import build_model as _build_model

    return _build_model(*args, **kwargs)


__all__ = ["build_model", "list_backbones", "list_heads", "BACKBONES", "HEADS", "__version__"]
