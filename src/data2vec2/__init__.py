"""data2vec 2.0: efficient self-supervised pre-training of Transformers (Baevski et al., 2022)."""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .export import load_encoder  # noqa: E402

__all__ = ["Config", "load_config", "load_encoder", "__version__"]
