"""The ``reference`` config section as one object (read by every reference module)."""

from __future__ import annotations

from dataclasses import dataclass

from marsdiff.config import filled_section


@dataclass(frozen=True)
class ReferenceConfig:
    """The ``reference`` config section, filled from the schema (every key; the schema's
    descriptions give each default's reason)."""

    source: str
    folder: str | None
    metadata_csv: str | None
    tile: str | None
    labels: str | None
    window_px: int
    image_size: int
    size_bins: int
    lighting_bins: int
    contrast_bins: int
    heldout_fraction: float
    max_craters: int | None
    seed: int
    min_image_px: int
    min_images_per_class: int

    @classmethod
    def from_dict(cls, cfg: dict | None) -> "ReferenceConfig":
        """Build from (part of) the ``reference`` section: a stage's params hold only the keys its
        output depends on, the rest take the schema's defaults."""
        return cls(**filled_section("reference", cfg))
