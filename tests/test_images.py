"""Image processing of the views: depth maps downscaled with 0 meaning "no surface"."""

import numpy as np

from nerf_pipeline.scenes.images import downscale_depth


def test_downscaled_depth_averages_only_the_pixels_with_a_surface():
    depth = np.array([[2.0, 4.0, 0.0, 0.0, 5.0, 0.0],
                      [6.0, 8.0, 0.0, 3.0, 7.0, 0.0],
                      [1.0, 0.0, 0.0, 0.0, 9.0, 9.0],
                      [0.0, 0.0, 0.0, 0.0, 9.0, 9.0],
                      [4.0, 4.0, 4.0, 4.0, 4.0, 4.0]], np.float32)  # the last row is cropped at factor 2
    np.testing.assert_array_equal(downscale_depth(depth, 2), [
        [5.0, 0.0, 6.0],  # a whole surface; 1 of 4 with one (mostly none: none); 2 of 4 (half: their mean)
        [0.0, 0.0, 9.0],  # 1 of 4; none; all four
    ])
    # a plain block mean would put the silhouette's blocks half-way between the object and the camera
    assert downscale_depth(depth, 2).dtype == np.float32
    np.testing.assert_array_equal(downscale_depth(depth, 1), depth)


def test_a_silhouette_keeps_the_object_depth_or_none():
    """An object at depth 3 in front of nothing, edges at every offset: each block is 3 or 0, never between."""
    depth = np.zeros((12, 12), np.float32)
    depth[2:9, 3:10] = 3.0
    for factor in (2, 3, 4):
        small = downscale_depth(depth, factor)
        assert set(np.unique(small).tolist()) <= {0.0, 3.0} and (small == 3.0).any()
