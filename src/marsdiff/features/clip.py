"""CLIP image embeddings through open_clip.

``model`` is an open_clip architecture name (ViT-B-32 gives the 512-D vectors of the original
study). ``pretrained`` is either an open_clip tag (e.g. 'openai'; the weights must already be in
your Hugging Face / open_clip cache, since nothing is downloaded at run time) or the path of a
local checkpoint file. ``model_config`` optionally registers a custom architecture JSON (its
file stem becomes the model name), which is how the tests build a tiny CLIP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from marsdiff.errors import MarsdiffError, MissingPackageError
from marsdiff.features.base import FeatureExtractor
from marsdiff.io.digests import file_digest


class ClipFeatures(FeatureExtractor):
    name = "clip"

    def __init__(self, model: str, pretrained: str | None, model_config: str | None, batch_size: int, device: str):
        super().__init__(batch_size=batch_size, device=device)
        try:
            import open_clip
        except ImportError:
            raise MissingPackageError("open_clip_torch", "the clip feature extractor") from None
        if model_config:
            if not Path(model_config).is_file():
                raise MarsdiffError(f"{model_config}: features.clip.model_config file not found")
            open_clip.add_model_config(model_config)
        self.model_name = model
        self.pretrained = pretrained
        self.model_config = model_config
        if model not in open_clip.list_models():
            raise MarsdiffError(f"features.clip.model {model!r} is not an open_clip architecture (e.g. ViT-B-32)")
        local = pretrained is not None and Path(pretrained).is_file()
        if pretrained and not local and os.sep in pretrained:
            raise MarsdiffError(f"{pretrained}: features.clip.pretrained checkpoint file not found")
        try:
            # HF_HUB_OFFLINE keeps a tag from silently reaching for the network.
            previous = os.environ.get("HF_HUB_OFFLINE")
            os.environ["HF_HUB_OFFLINE"] = "1"
            try:
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=pretrained, device=self.device
                )
            finally:
                if previous is None:
                    os.environ.pop("HF_HUB_OFFLINE", None)
                else:
                    os.environ["HF_HUB_OFFLINE"] = previous
        except MarsdiffError:
            raise
        except Exception as err:  # open_clip raises RuntimeError/OSError/HF errors for missing weights
            raise MarsdiffError(
                f"cannot load CLIP {model} with pretrained={pretrained!r} offline "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "give a local checkpoint path or pre-populate the cache"
            ) from None
        self.model.eval()
        self._weights_id = file_digest(pretrained) if local else (pretrained or "random-init")
        self._dim = int(self.model.visual.output_dim)

    @property
    def dim(self) -> int:
        return self._dim

    def _identity_fields(self) -> dict[str, Any]:
        config_digest = file_digest(self.model_config) if self.model_config else None
        return {"model": self.model_name, "weights": self._weights_id, "model_config": config_digest}

    def _extract_batch(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images]).to(self.device)
        return self.model.encode_image(batch).float().cpu().numpy()
