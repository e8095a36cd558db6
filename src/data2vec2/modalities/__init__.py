"""The modalities: one folder each, one line each in this table, the only place where a modality is
chosen by its name. To add one, see docs/ARCHITECTURE.md."""

from .audio import AUDIO
from .image import IMAGE
from .text import TEXT

MODALITIES = {"image": IMAGE, "audio": AUDIO, "text": TEXT}
