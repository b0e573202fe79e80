"""COLMAP sparse models read directly (pure numpy, no pycolmap): cameras, image poses, 3D points.

A capture folder holds ``images/`` and the model in ``sparse/0/`` (``find_model`` also accepts
``sparse/`` or the folder itself): three files, all binary (little-endian, each starting with a
uint64 count of its records) or all text (one record a line, ``#`` comments):

* ``cameras``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``; binary int32, int32 model id, uint64,
  uint64, then float64 params, as many as the model has, in its order (PINHOLE: fx fy cx cy;
  SIMPLE_RADIAL: f cx cy k; ... as in COLMAP's src/colmap/sensor/models.h).
* ``images``: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``, then the image's 2D points, not
  read here (text: the next line, ``X Y POINT3D_ID`` triples, maybe none; binary: int32, 7 float64,
  int32, the NUL-ended name, a uint64 count of points and 24 bytes each).
* ``points3D``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]``; binary uint64, 3 float64, 3 uint8,
  float64, a uint64 track length and 8 bytes per track element.

Conventions: ``(qvec, tvec)`` maps world to camera, ``x_cam = R(qvec) @ x_world + tvec``, with
the Hamilton quaternion ``(w, x, y, z)`` and OpenCV camera axes (x right, y down, z forward);
``camera_to_world`` turns it into this project's OpenGL camera-to-world (``camera.py``).
Shapes: ``Camera.params`` [K] float64; ``Image.qvec`` [4], ``Image.tvec`` [3] float64;
``Model.points`` [P, 3] float64 and ``Model.colors`` [P, 3] uint8, in the cameras' (arbitrary)
world frame and scale.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerf_pipeline.errors import DataError
from nerf_pipeline.scenes.scene import check_intrinsics

# model id -> (name, number of params), as COLMAP numbers them (src/colmap/sensor/models.h)
MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5), 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4), 16: ("EUCM", 6),
}
NUM_PARAMS = dict(MODELS.values())

# model -> (indices in params of fx, fy, cx, cy; of the OpenCV k1, k2, p1, p2 it has, the rest being 0)
SUPPORTED_MODELS = {
    "SIMPLE_PINHOLE": ((0, 0, 1, 2), ()),
    "PINHOLE": ((0, 1, 2, 3), ()),
    "SIMPLE_RADIAL": ((0, 0, 1, 2), (3,)),
    "RADIAL": ((0, 0, 1, 2), (3, 4)),
    "OPENCV": ((0, 1, 2, 3), (4, 5, 6, 7)),
}


@dataclass(frozen=True)
class Camera:
    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # [K] float64, in the model's order


@dataclass(frozen=True)
class Image:
    image_id: int
    name: str  # relative to the capture's image folder
    camera_id: int
    qvec: np.ndarray  # [4] float64 (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray  # [3] float64, world-to-camera translation


@dataclass(frozen=True)
class Model:
    cameras: dict[int, Camera]
    images: list[Image]  # sorted by name
    points: np.ndarray  # [P, 3] float64
    colors: np.ndarray  # [P, 3] uint8


def find_model(folder) -> Path | None:
    """The model folder of a capture: ``sparse/0``, ``sparse`` or ``folder`` itself, whichever first
    holds ``cameras.bin`` or ``cameras.txt``; ``None`` if none does."""
    folder = Path(folder)
    for candidate in (folder / "sparse" / "0", folder / "sparse", folder):
        if (candidate / "cameras.bin").is_file() or (candidate / "cameras.txt").is_file():
            return candidate
    return None


def read_model(model_folder) -> Model:
    """The cameras, images (sorted by name) and points of a model folder; binary if ``cameras.bin`` is there."""
    folder = Path(model_folder)
    binary = (folder / "cameras.bin").is_file()
    if not binary and not (folder / "cameras.txt").is_file():
        raise DataError(f"{folder}: no cameras.bin or cameras.txt; expected a COLMAP sparse model folder "
                        "(cameras, images and points3D as .bin or .txt).")
    paths = {part: folder / f"{part}.{'bin' if binary else 'txt'}" for part in ("cameras", "images", "points3D")}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path}: file not found; a COLMAP model holds cameras, images and points3D files "
                            f"of one format, and this one has {paths['cameras'].name}.")
    readers = (_binary_cameras, _binary_images, _binary_points) if binary else (_text_cameras, _text_images,
                                                                                 _text_points)
    cameras = {camera.camera_id: camera for camera in readers[0](paths["cameras"])}
    images = sorted(readers[1](paths["images"]), key=lambda image: image.name)
    if not images:
        raise DataError(f"{paths['images']}: holds no images; COLMAP registered none, so there are no poses.")
    for image in images:
        if image.camera_id not in cameras:
            raise DataError(f"{paths['images']}: image {image.name} uses camera {image.camera_id}, which "
                            f"{paths['cameras'].name} does not hold (it holds {sorted(cameras)}).")
        if not np.all(np.isfinite(image.qvec)) or not np.linalg.norm(image.qvec) > 1e-12:
            raise DataError(f"{paths['images']}: image {image.name} has quaternion {image.qvec.tolist()}; "
                            "expected a finite, non-zero rotation.")
    checked = set()  # each camera once, named with the first image that uses it
    for image in images:
        camera = cameras[image.camera_id]
        # (an unsupported model's params mean other things: it is refused by name when its intrinsics are asked for)
        if camera.model in SUPPORTED_MODELS and camera.camera_id not in checked:
            checked.add(camera.camera_id)
            check_intrinsics(intrinsics(camera)[0], 1, camera.height, camera.width, str(paths["cameras"]),
                             views=[f"camera {camera.camera_id} (of image {image.name})"])
    points, colors = readers[2](paths["points3D"])
    return Model(cameras, images, points, colors)


def intrinsics(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """``(fx, fy, cx, cy)`` [4] float64 in pixels and OpenCV distortion ``(k1, k2, p1, p2)`` [4] float64.

    COLMAP, like ``camera.py``, puts the image's top-left corner at (0, 0) and the centre of
    pixel (row, col) at (col + 0.5, row + 0.5), so its cx, cy carry over unchanged.
    """
    if camera.model not in SUPPORTED_MODELS:
        raise DataError(f"camera {camera.camera_id} has COLMAP model {camera.model}, which is not supported (the "
                        f"supported ones are {', '.join(SUPPORTED_MODELS)}); undistort the images with COLMAP's "
                        "image_undistorter, which writes a PINHOLE model of them.")
    pinhole, distortion = SUPPORTED_MODELS[camera.model]
    coefficients = np.zeros(4)
    coefficients[:len(distortion)] = camera.params[list(distortion)]
    return camera.params[list(pinhole)].astype(np.float64), coefficients


def rotation_matrix(qvec: np.ndarray) -> np.ndarray:
    """The rotation matrix [3, 3] float64 of a Hamilton quaternion ``(w, x, y, z)`` (normalised first)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def camera_to_world(image: Image) -> np.ndarray:
    """The image's camera-to-world [4, 4] float64 in the OpenGL convention (right, up, back columns)."""
    world_to_camera = rotation_matrix(image.qvec)
    c2w = np.eye(4)
    c2w[:3, :3] = world_to_camera.T
    c2w[:3, 3] = -world_to_camera.T @ image.tvec
    c2w[:3, 1:3] *= -1.0  # OpenCV's y down, z forward -> OpenGL's y up, z back
    return c2w


# ----------------------------------------------------------------------------- text files


def _text_records(path: Path, expected: str, parse, two_lines: bool = False) -> list:
    """``parse(fields)`` of each line that is neither blank nor a comment; a line it cannot parse is refused.
    With ``two_lines`` each record's line is followed by one more (an image's 2D points), which is skipped."""
    try:
        lines = iter(enumerate(path.read_text(encoding="utf-8").splitlines(), start=1))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it as text ({e}).") from None
    records = []
    for number, line in lines:
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            records.append(parse(fields))
        except (IndexError, ValueError):
            raise DataError(f"{path}, line {number}: expected {expected}; got {line[:120]!r}.") from None
        # an image's 2D points (not needed here): whole (X, Y, POINT3D_ID) triples, maybe none (an empty line)
        if two_lines:
            number, line = next(lines, (number + 1, ""))
            if len(line.split()) % 3:
                raise DataError(f"{path}, line {number}: expected the previous image's 2D points "
                                f"'X Y POINT3D_ID ...' (each image takes two lines); got {line[:120]!r}.")
    return records


def _camera(path: Path, camera_id, model, width, height, params) -> Camera:
    if model in NUM_PARAMS and len(params) != NUM_PARAMS[model]:
        raise DataError(f"{path}: camera {camera_id} of model {model} has {len(params)} params; "
                        f"the model has {NUM_PARAMS[model]}.")
    if width <= 0 or height <= 0 or not np.all(np.isfinite(params)):
        raise DataError(f"{path}: camera {camera_id} has size {width}x{height} and params {params.tolist()}; "
                        "expected a positive size and finite params.")
    return Camera(camera_id, model, width, height, params)


def _text_cameras(path: Path) -> list[Camera]:
    return _text_records(path, "'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]'", lambda f: _camera(
        path, int(f[0]), f[1], int(f[2]), int(f[3]), np.array(f[4:], dtype=np.float64)))


def _text_images(path: Path) -> list[Image]:
    def parse(f):
        values = np.array(f[1:8], dtype=np.float64)
        return Image(int(f[0]), f[9], int(f[8]), values[:4], values[4:])
    return _text_records(path, "'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'", parse, two_lines=True)


def _text_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    def parse(f):
        point, color, _ = np.array(f[1:4], dtype=np.float64), np.array(f[4:7], dtype=np.int64), float(f[7])
        if not np.all((color >= 0) & (color <= 255)):
            raise ValueError
        return point, color
    records = _text_records(path, "'POINT3D_ID X Y Z R G B ERROR TRACK[]' with R, G, B in 0..255", parse)
    return _points_and_colors(records)


def _points_and_colors(records) -> tuple[np.ndarray, np.ndarray]:
    """``(points [P, 3] float64, colors [P, 3] uint8)`` of ``(xyz, rgb)`` records."""
    points = np.array([point for point, _ in records], dtype=np.float64).reshape(-1, 3)
    return points, np.array([color for _, color in records], dtype=np.uint8).reshape(-1, 3)


# ----------------------------------------------------------------------------- binary files


def _records(path: Path, what: str, read_record) -> list:
    """The records of a binary file: a uint64 count, then that many records, then nothing.

    ``read_record(data, offset)`` unpacks the record at ``offset`` and returns it with the offset after it.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror}).") from None
    if len(data) < 8:
        raise DataError(f"{path}: {len(data)} bytes; expected at least the 8-byte count of {what}.")
    (count,), offset, records = struct.unpack_from("<Q", data), 8, []
    try:
        while len(records) < count:
            record, offset = read_record(data, offset)
            if offset > len(data):
                raise struct.error
            records.append(record)
    except struct.error:  # the bytes ran out inside a record
        raise DataError(f"{path}: truncated after {len(records)} of {count} {what}; the file is cut short or "
                        "corrupt (write the model again).") from None
    if offset != len(data):
        raise DataError(f"{path}: {len(data) - offset} bytes left after its {count} {what}; "
                        "the file is corrupt (write the model again).")
    return records


def _binary_cameras(path: Path) -> list[Camera]:
    def record(data: bytes, offset: int):
        camera_id, model_id, width, height = struct.unpack_from("<iiQQ", data, offset)
        if model_id not in MODELS:
            raise DataError(f"{path}: camera {camera_id} has unknown model id {model_id}; "
                            f"expected one of COLMAP's 0..{max(MODELS)}.")
        model, count = MODELS[model_id]
        params = np.array(struct.unpack_from(f"<{count}d", data, offset + 24))
        return _camera(path, camera_id, model, width, height, params), offset + 24 + 8 * count
    return _records(path, "cameras", record)


def _binary_images(path: Path) -> list[Image]:
    def record(data: bytes, offset: int):
        image_id, *values, camera_id = struct.unpack_from("<i7di", data, offset)
        end = data.find(b"\0", offset + 64)  # the name ends with a NUL byte
        (num_points,) = struct.unpack_from("<Q", data, end + 1 if end >= 0 else len(data))
        try:
            name = data[offset + 64:end].decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: image {image_id}'s name is not UTF-8 text; the file is corrupt.") from None
        # the 2D points, 24 bytes each, are not needed here
        return Image(image_id, name, camera_id, np.array(values[:4]), np.array(values[4:])), end + 9 + 24 * num_points
    return _records(path, "images", record)


def _binary_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    def record(data: bytes, offset: int):
        _, x, y, z, r, g, b, _, track_length = struct.unpack_from("<Q3d3BdQ", data, offset)
        # the track, which images saw the point (8 bytes each), is not needed here
        return ((x, y, z), (r, g, b)), offset + 51 + 8 * track_length
    return _points_and_colors(_records(path, "points", record))
