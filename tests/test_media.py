import imageio.v2 as imageio
import numpy as np
from conftest import count_video_frames

from nerf_pipeline import media


def test_mp4_keeps_every_frame_even_at_odd_sizes(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(7, 25, 31, 3), dtype=np.uint8)
    media.write_mp4(tmp_path / "v.mp4", frames, fps=10)
    assert count_video_frames(tmp_path / "v.mp4") == 7
    first = imageio.get_reader(tmp_path / "v.mp4", format="FFMPEG").get_data(0)
    assert first.shape[:2] == (26, 32)  # padded to even sizes for yuv420p
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary file left


def test_gif_has_one_frame_per_input(tmp_path):
    frames = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 128, 255)])
    media.write_gif(tmp_path / "p.gif", frames, frame_ms=100)
    read = imageio.mimread(tmp_path / "p.gif")
    assert len(read) == 3 and read[1][0, 0, 0] == 128


def test_depth_colours_near_bright_and_empty_black():
    depth = np.array([[2.0, 5.0, 3.0]])
    acc = np.array([[1.0, 1.0, 0.0]])
    rgb = media.colorize_depth(depth, acc, lo=2.0, hi=5.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, 0].sum() > rgb[0, 1].sum()  # near is brighter
    assert rgb[0, 2].sum() == 0  # nothing there
