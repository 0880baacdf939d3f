"""The default extractor's MobileNetV2, built without torchvision, is torchvision's network.

marsdiff builds MobileNetV2 in plain torch.nn (``mobilenet_v2_module``) so the feature stages
skip ``import torchvision`` and the ``torch._dynamo`` it pulls in (docs/performance.md). The
features must stay bit-identical: same module names (the state dict loads strictly), same
operations in the same order at every layer the ``layer`` setting can cut at.
"""

from __future__ import annotations


import numpy as np
import pytest
from conftest import run_python

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def both_models():
    from marsdiff.data.assets import mobilenet_v2_weights
    from marsdiff.features.torchvision_models import load_state_dict, mobilenet_v2_module

    state = load_state_dict(mobilenet_v2_weights(), "MobileNetV2")
    theirs = torchvision.models.mobilenet_v2(weights=None)
    ours = mobilenet_v2_module()
    for model in (theirs, ours):
        model.load_state_dict(state, strict=True)
        model.eval()
    return theirs, ours


def test_same_modules_and_parameters(both_models):
    theirs, ours = both_models
    assert [name for name, _ in ours.named_modules()] == [name for name, _ in theirs.named_modules()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_bit_identical_at_every_layer(both_models, one_torch_thread):
    theirs, ours = both_models
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for layer in range(len(theirs.features)):
            assert torch.equal(ours.features[: layer + 1](x), theirs.features[: layer + 1](x)), f"layer {layer}"


def test_a_wrong_file_is_refused(tmp_path):
    """A state dict that is not a whole MobileNetV2 still fails the strict load with one line."""
    from marsdiff.errors import MarsdiffError
    from marsdiff.features.torchvision_models import MobileNetV2Features

    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(MarsdiffError, match="do not fit"):
        MobileNetV2Features(weights=str(path), layer=10, grid=2, input_size=128, batch_size=4, device="cpu")


def test_the_default_extractor_imports_no_torchvision():
    probe = (
        "import sys, numpy as np\n"
        "from marsdiff.features.registry import build_extractor\n"
        "extractor = build_extractor('mobilenet_v2', {'device': 'cpu'})\n"
        "extractor.extract([np.zeros((32, 32, 3), np.uint8)])\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))\n"
    )
    assert run_python(probe).strip().splitlines()[-1] == "[]"
