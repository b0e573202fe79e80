"""Gaussians as the PLY file that 3DGS writes and its viewers read (SuperSplat, the SIBR viewer, gsplat's, …).

One ``vertex`` element, binary little-endian, every property a float32, in this order:

==============================  ====================================================================
properties                      values
==============================  ====================================================================
``x y z``                       the mean
``nx ny nz``                    zeros (3DGS writes them; nothing reads them)
``f_dc_0 f_dc_1 f_dc_2``        the degree-0 SH coefficient of red, green, blue
``f_rest_0`` … ``f_rest_44``    degrees 1-3, channel-major: red's 15 coefficients, then green's, then blue's
``opacity``                     the opacity's logit
``scale_0 scale_1 scale_2``     the log scales
``rot_0 rot_1 rot_2 rot_3``     the rotation quaternion, w first (not necessarily unit)
==============================  ====================================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nerf_pipeline.errors import DataError
from nerf_pipeline.splats.gaussians import NAMES, check_arrays

PROPERTIES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
              + [f"f_rest_{i}" for i in range(45)]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
          "char": "i1", "int8": "i1", "ushort": "u2", "uint16": "u2", "short": "i2", "int16": "i2",
          "uint": "u4", "uint32": "u4", "int": "i4", "int32": "i4"}


def to_table(arrays: dict) -> np.ndarray:
    """The Gaussians ``arrays`` (``gaussians.NAMES``) as the ``[N, 62]`` float32 table of ``PROPERTIES``."""
    count = check_arrays(arrays)
    columns = [arrays["means"], np.zeros((count, 3), np.float32), np.reshape(arrays["sh_dc"], (count, 3)),
               np.transpose(arrays["sh_rest"], (0, 2, 1)).reshape(count, 45),
               np.reshape(arrays["opacity_logits"], (count, 1)), arrays["log_scales"], arrays["quats"]]
    return np.concatenate([np.asarray(c, np.float32) for c in columns], axis=1)


def from_table(table: np.ndarray) -> dict:
    """The inverse of ``to_table``."""
    table = np.asarray(table, np.float32)
    count = len(table)
    return {"means": table[:, 0:3].copy(), "sh_dc": table[:, 6:9].reshape(count, 1, 3).copy(),
            "sh_rest": table[:, 9:54].reshape(count, 3, 15).transpose(0, 2, 1).copy(),
            "opacity_logits": table[:, 54].copy(), "log_scales": table[:, 55:58].copy(),
            "quats": table[:, 58:62].copy()}


def write(path, arrays: dict) -> None:
    """Write the Gaussians ``arrays`` to ``path`` (the module's layout)."""
    table = to_table(arrays)
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {len(table)}",
                        *(f"property float {name}" for name in PROPERTIES), "end_header"]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(table.astype("<f4").tobytes())


def read(path) -> dict:
    """The Gaussians (``gaussians.NAMES``) of a 3DGS PLY file at ``path``: ours, or one with its properties in
    another order, other element types, other elements after the vertices, or fewer ``f_rest`` (a lower SH
    degree: the missing coefficients are zero). Raises ``DataError`` when it is not one."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise DataError(f"{path}: not a PLY file")
    body = data.index(b"\n", end) + 1
    lines = data[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in [line.strip() for line in lines]:
        raise DataError(f"{path}: only binary little-endian PLY files of Gaussians are read")
    elements, current = [], None
    for line in lines:
        words = line.split()
        if words[:1] == ["element"]:
            current = (words[1], int(words[2]), [])
            elements.append(current)
        elif words[:1] == ["property"] and current is not None:
            if words[1] == "list":
                raise DataError(f"{path}: element '{current[0]}' has a list property; not a file of Gaussians")
            current[2].append((words[2], "<" + _TYPES[words[1]]))
    offset = body
    for name, count, properties in elements:
        dtype = np.dtype(properties)
        if name == "vertex":
            table = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            break
        offset += count * dtype.itemsize
    else:
        raise DataError(f"{path}: has no vertex element")
    fields = set(table.dtype.names)
    missing = [p for p in PROPERTIES if p not in fields and not p.startswith(("f_rest_", "n"))]
    if missing:
        raise DataError(f"{path}: not a file of Gaussians (no {', '.join(missing)})")
    rest = sum(1 for p in fields if p.startswith("f_rest_"))
    if rest % 3 or rest // 3 + 1 not in (1, 4, 9, 16):
        raise DataError(f"{path}: {rest} f_rest properties; expected 0, 9, 24 or 45")
    per_channel = rest // 3
    columns = []
    for name in PROPERTIES:
        if name.startswith("f_rest_"):
            channel, k = divmod(int(name[7:]), 15)
            present = k < per_channel
            columns.append(table[f"f_rest_{channel * per_channel + k}"] if present else np.zeros(len(table)))
        else:
            columns.append(table[name] if name in fields else np.zeros(len(table)))
    arrays = from_table(np.stack([np.asarray(c, np.float32) for c in columns], axis=1))
    return {name: arrays[name] for name in NAMES}
