"""The lesion model both paths run, with the same settings."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from operators.lesion_model import DEFAULT_INPUT_RESAMPLING

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSettings:
    """Which nnU-Net model runs, where and how.

    Attributes
    ----------
    folder : Path
        nnU-Net trained-model folder (or exported zip) that :class:`operators.lesion_model.LesionModel` loads.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    use_mirroring : bool
        nnU-Net's test-time mirroring (up to 8 passes per patch).
    tile_step_size : float
        Sliding-window step as a fraction of the patch size (0.5 is nnU-Net's default).
    input_resampling : str
        ``"plans"`` or ``"torch"``: how crops are resampled to the model's spacing
        (see :meth:`operators.lesion_model.LesionModel.from_folder`).
    """

    folder: Path
    device: str = "cpu"
    use_mirroring: bool = False
    tile_step_size: float = 0.5
    input_resampling: str = DEFAULT_INPUT_RESAMPLING

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"] = str(self.folder)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSettings:
        return cls(**{**data, "folder": Path(data["folder"])})

    def load(self) -> Any:
        """The :class:`operators.lesion_model.LesionModel` with these settings."""
        from operators.lesion_model import LesionModel

        return LesionModel.from_folder(self.folder, device=self.device, use_mirroring=self.use_mirroring,
                                       tile_step_size=self.tile_step_size, input_resampling=self.input_resampling)
