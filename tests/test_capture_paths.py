"""A capture's metadata may name only files inside the capture's folder (unless ``data.allow_paths_outside``).

Whatever ``transforms.json``'s ``file_path`` / ``mask_path`` or a COLMAP model's image names point at is copied
into ``data/scene``, which ``dvc push`` sends to the remote: an absolute path or one that climbs out with ``../``
would take any image the user can read along. Listed folders (LLFF's and photo folders' ``images/``, any
capture's ``masks/``) name only what is in them.
"""

from __future__ import annotations

import json
import shutil

import pytest
from captures import write_colmap_binary_model, write_colmap_capture, write_colmap_text_model
from conftest import assert_user_error, stage, tiny_params, write_params
from scenes import write_blender, write_ngp

from nerf_pipeline import config
from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes import colmap, sources


def views_of(source, **data):
    params = tiny_params()
    params["data"].update(source=str(source), **data)
    return sources.read_views(config.from_dict(params), scratch=None)


def point_frame_at(transforms, index: int, key: str, value: str) -> None:
    meta = json.loads(transforms.read_text())
    meta["frames"][index][key] = value
    transforms.write_text(json.dumps(meta))


def an_image_outside(tmp_path, capture, name="frame_002.png"):
    """A copy of one of the capture's images outside its folder (as any image of the user's would be)."""
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(capture / "images" / name, outside)
    return outside


@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_a_file_path_outside_the_capture_is_refused_naming_the_file_and_frame(tmp_path, how):
    capture = tmp_path / "capture"
    write_ngp(capture)
    outside = an_image_outside(tmp_path, capture)
    name = str(outside) if how == "absolute" else "../elsewhere/frame_002.png"
    point_frame_at(capture / "transforms.json", 2, "file_path", name)
    with pytest.raises(DataError) as error:
        views_of(capture)
    assert str(error.value).startswith(f"{capture / 'transforms.json'}: frame 2's 'file_path' is '{name}', outside "
                                       f"the capture's folder {capture}")
    assert "data.allow_paths_outside: true" in str(error.value)
    views = views_of(capture, allow_paths_outside=True)  # the user says the capture may reach outside
    assert views.count == 6 and views.read(2).shape == (20, 28, 3)


def test_a_path_that_stays_inside_is_read(tmp_path):
    capture = tmp_path / "capture"
    write_ngp(capture)
    point_frame_at(capture / "transforms.json", 1, "file_path", "./images/../images/frame_001.png")
    assert views_of(capture).count == 6


def test_a_blender_file_path_outside_the_folder_is_refused(tmp_path):
    write_blender(tmp_path / "scene", num_train=6, num_val=2)
    point_frame_at(tmp_path / "scene" / "transforms_val.json", 1, "file_path", "../../r_7")
    with pytest.raises(DataError, match=r"transforms_val\.json: frame 1's 'file_path' is '\.\./\.\./r_7', outside"):
        views_of(tmp_path / "scene")


def test_a_mask_path_outside_the_capture_is_refused(tmp_path):
    capture = tmp_path / "capture"
    write_ngp(capture, num_views=4)
    meta = json.loads((capture / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame["mask_path"] = frame["file_path"]  # any image serves as a mask
    meta["frames"][3]["mask_path"] = str(an_image_outside(tmp_path, capture, "frame_003.png"))
    (capture / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"transforms\.json: frame 3's 'mask_path' is '/.*', outside the capture's"):
        views_of(capture)
    assert views_of(capture, allow_paths_outside=True).mask(3).shape == (20, 28)


@pytest.mark.parametrize("binary", [False, True])
def test_a_colmap_image_name_outside_the_capture_is_refused(tmp_path, binary):
    capture = tmp_path / "capture"
    written = write_colmap_capture(capture, num_views=6, binary=binary)
    an_image_outside(tmp_path, capture, written["names"][0])
    model = colmap.read_model(capture / "sparse" / "0")
    renamed = [colmap.Image(i.image_id, "../../elsewhere/" + i.name if i.name == written["names"][0] else i.name,
                            i.camera_id, i.qvec, i.tvec) for i in model.images]
    writer = write_colmap_binary_model if binary else write_colmap_text_model
    writer(capture / "sparse" / "0", model.cameras, renamed, model.points, model.colors)
    images_file = capture / "sparse" / "0" / ("images.bin" if binary else "images.txt")
    with pytest.raises(DataError) as error:
        views_of(capture)
    image_id = next(i.image_id for i in renamed if i.name.startswith("../"))
    assert str(error.value).startswith(f"{images_file}: image {image_id}'s name is '../../elsewhere/frame_000.png', "
                                       f"outside the capture's folder {capture}")
    assert views_of(capture, allow_paths_outside=True).count == 6


def test_the_download_stage_refuses_it_and_writes_no_scene(tmp_path):
    capture = tmp_path / "capture"
    write_ngp(capture)
    point_frame_at(capture / "transforms.json", 0, "file_path", "/etc/ssl/private/key.png")
    params = tiny_params()
    params["data"]["source"] = str(capture)
    write_params(tmp_path, params)
    result = stage("download", "--out-scene", "data/scene", cwd=tmp_path)
    assert_user_error(result, "transforms.json: frame 0's 'file_path' is '/etc/ssl/private/key.png', outside the "
                              f"capture's folder {capture}", "'data.allow_paths_outside: true' in params.yaml")
    assert list((tmp_path / "data").iterdir()) == []  # (the stage made data/ to check it can write there)
