"""Device choice shared by every stage."""

import pytest
import torch

from marsdiff.devices import resolve_device
from marsdiff.errors import MarsdiffError


def test_auto_and_explicit_devices():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    given = torch.device("cpu")
    assert resolve_device(given) is given


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu_names_the_setting():
    with pytest.raises(MarsdiffError, match=r"features\.device is 'cuda' but no CUDA GPU is available"):
        resolve_device("cuda", "features.device")
    with pytest.raises(MarsdiffError, match=r"sampling\.device is 'cuda:1'"):
        resolve_device("cuda:1", "sampling.device")
