"""What the trainer needs from an objective without a teacher (MAE, MLM): its targets come from
the input itself."""

from __future__ import annotations

from torch import nn

from ..config import Config
from ..encoder import Encoder
from ..errors import ConfigError
from ..model import PretrainingObjective


def require_hooks(encoder: Encoder, hooks: tuple[str, ...], objective: str, needs: str, config: Config) -> None:
    """A ConfigError unless the modality's local encoder has every hook this objective uses."""
    if not all(hasattr(encoder.local_encoder, hook) for hook in hooks):
        raise ConfigError(f"objective: {objective} needs {needs}; the {config.model.modality} encoder has none")


class TeacherlessModel(PretrainingObjective):
    """`student` (with `.encoder`) is trained and saved; `teacher` is empty; one masked view per sample."""

    def __init__(self, student: nn.Module, config: Config, why_one_mask: str):
        super().__init__()
        if config.masking.num_masks != 1:
            raise ConfigError(f"masking.num_masks: {why_one_mask}; set masking.num_masks=1")
        self.config = config
        self.student = student
        self.teacher = nn.Module()  # nothing to average: saved as an empty state

    @property
    def encoder(self) -> Encoder:
        return self.student.encoder

    def after_update(self, update: int) -> dict[str, float]:
        return {}  # no teacher to average
