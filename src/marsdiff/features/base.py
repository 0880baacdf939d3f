"""The feature-extractor interface shared by every encoder.

An extractor maps a batch of uint8 images (grey (H, W) or RGB (H, W, 3), any size) to float32
vectors. ``identity()`` describes everything that changes its output (architecture, layer,
weights file content, preprocessing), and keys the feature cache.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from marsdiff.devices import resolve_device

# Bump when preprocessing changes in a way that alters features for the same config.
PREPROCESSING_VERSION = 1


def as_rgb_batch(images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Each image as uint8 (H, W, 3); grey images are replicated over the three channels."""
    batch = []
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"image {index}: expected uint8 pixels, got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index}: expected (H, W) or (H, W, 3), got shape {image.shape}")
        batch.append(image)
    return batch


class FeatureExtractor(ABC):
    """Images in, float32 feature vectors out, deterministically."""

    name: str = "base"

    def __init__(self, batch_size: int, device: str):
        self.batch_size = int(batch_size)
        self.device = resolve_device(device, "features.device")

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of one feature vector."""

    @abstractmethod
    def _identity_fields(self) -> dict[str, Any]:
        """Everything besides the name that changes the output (weights digests included)."""

    @abstractmethod
    def _extract_batch(self, images: list[np.ndarray]) -> np.ndarray:
        """Features of at most ``batch_size`` RGB uint8 images."""

    def identity(self) -> str:
        fields = {"name": self.name, "preprocessing": PREPROCESSING_VERSION, **self._identity_fields()}
        return json.dumps(fields, sort_keys=True)

    def cache_key(self) -> str:
        return hashlib.sha256(self.identity().encode()).hexdigest()[:20]

    def extract(self, images: Sequence[np.ndarray] | np.ndarray, progress: bool = False) -> np.ndarray:
        """Float32 array (N, dim) for N images."""
        import torch

        batch = as_rgb_batch(images)
        chunks = []
        starts = range(0, len(batch), self.batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"{self.name} features", unit="batch")
        with torch.inference_mode():
            for start in starts:
                chunks.append(self._extract_batch(batch[start: start + self.batch_size]))
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(chunks).astype(np.float32))
