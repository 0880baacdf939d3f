"""The shared figure helper (marsdiff.io.figures): headless backend, atomic PNG, figures closed."""

from __future__ import annotations

import pytest

from marsdiff.io.figures import pyplot, save_png, subplots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_save_png_writes_a_png_at_the_dpi_and_closes_the_figure(tmp_path):
    plt = pyplot()
    assert plt.get_backend().lower() == "agg"
    fig, axes = subplots(1, 2, figsize=(2.0, 1.0), squeeze=False)
    axes[0, 0].plot([0, 1], [1, 0])
    target = tmp_path / "sub" / "curve.png"
    assert save_png(fig, target, dpi=50) == target
    data = target.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    # IHDR: width and height in pixels are figsize x dpi
    assert int.from_bytes(data[16:20], "big") == 100 and int.from_bytes(data[20:24], "big") == 50
    assert fig.number not in plt.get_fignums()
    assert [p.name for p in target.parent.iterdir()] == ["curve.png"]  # no temporary left behind


def test_a_failed_save_leaves_no_file_and_still_closes_the_figure(tmp_path):
    plt = pyplot()
    fig, ax = subplots()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    fig.savefig = broken
    with pytest.raises(RuntimeError, match="disk full"):
        save_png(fig, tmp_path / "plot.png", dpi=50)
    assert list(tmp_path.iterdir()) == []
    assert fig.number not in plt.get_fignums()
