"""The ``reference`` config section as one object (read by every reference module)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceConfig:
    """The ``reference`` config section (defaults mirror the schema)."""

    source: str = "hrsc"
    folder: str | None = None
    metadata_csv: str | None = None
    tile: str | None = None
    labels: str | None = None
    window_px: int = 64
    image_size: int = 64
    size_bins: int = 6
    lighting_bins: int = 3
    contrast_bins: int = 3
    heldout_fraction: float = 0.25
    max_craters: int | None = None
    seed: int = 0
    min_image_px: int = 16
    min_images_per_class: int = 4

    @classmethod
    def from_dict(cls, cfg: dict) -> "ReferenceConfig":
        return cls(**{k: v for k, v in (cfg or {}).items()})
