"""What loading the pixel backend imports: diffusers' UNet2DModel without the model zoo.

:func:`marsdiff.diffusion.pixel_backend.defer_diffusers_model_packages` keeps diffusers'
``models.unets`` / ``models.transformers`` package ``__init__`` files (every diffusers model, and
through them peft, scipy.stats) from running until a name they define is asked for. Checked in a
fresh interpreter, because the test session has imported diffusers already.
"""

from __future__ import annotations

from conftest import run_python


def test_unet2d_imports_without_the_model_zoo_and_the_package_completes_on_demand():
    out = run_python("""
        import sys
        from marsdiff.diffusion.pixel_backend import defer_diffusers_model_packages
        defer_diffusers_model_packages()
        from diffusers import UNet2DModel
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=(8, 8), norm_num_groups=4,
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        heavy = [m for m in ("peft", "scipy.stats", "diffusers.models.unets.unet_2d_condition") if m in sys.modules]
        print("heavy", heavy)
        # a name only the package __init__ defines: the whole package runs, as without the deferral
        from diffusers.models.unets import UNet2DConditionModel
        from diffusers.models.transformers import Transformer2DModel
        import diffusers.models.unets as unets
        print("complete", UNet2DConditionModel.__name__, Transformer2DModel.__name__, unets.UNet2DModel is UNet2DModel)
    """)
    assert "heavy []" in out, out
    assert "complete UNet2DConditionModel Transformer2DModel True" in out, out
