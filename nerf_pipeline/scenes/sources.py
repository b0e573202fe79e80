"""The scene that ``data.source`` names, read (or rendered, or downloaded) into a ``Scene``.

Sources:

* ``synthetic`` (default): the built-in scene, rendered here (``synthetic.py``); offline.
* ``tiny_nerf``: the Keras example's ``tiny_nerf_data.npz`` from ``data.tiny_nerf_url``,
  retried on transient failures, checked against ``data.tiny_nerf_sha256`` when one is
  set. With no network it fails at once and says which other sources exist; it never
  falls back to another source by itself.
* a folder (or its ``transforms*.json``) in the NeRF-synthetic or instant-ngp/nerfstudio
  layout (``folders.py``);
* any other value: the path of a local ``.npz`` in the tiny_nerf layout.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from nerf_pipeline.config import Config
from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.scenes import folders, synthetic
from nerf_pipeline.scenes.scene import Scene, read_tiny_nerf_npz, validate

log = logging.getLogger(__name__)

OTHER_SOURCES = ("use 'data.source: synthetic' (the built-in scene, no network needed) or the path "
                 "of a local .npz with images, poses and focal")


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_offline_error(error: Exception) -> bool:
    """Name resolution failed or the network is unreachable: retrying will not help."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, socket.gaierror):
        return True
    return isinstance(reason, OSError) and reason.errno in (101, 113)  # ENETUNREACH, EHOSTUNREACH


def fetch(url: str, destination: Path, retries: int, timeout_s: float) -> None:
    """Download ``url`` to ``destination``, retrying timeouts and server errors with backoff."""
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(destination, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
            return
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == retries:
                raise DataError(f"downloading {url} failed: HTTP {e.code} {e.reason}. "
                                f"Check 'data.tiny_nerf_url', or {OTHER_SOURCES}.") from None
        except (urllib.error.URLError, OSError) as e:
            if _is_offline_error(e):
                raise DataError(f"cannot reach {url}: {getattr(e, 'reason', e)}. This machine seems to be "
                                f"offline; {OTHER_SOURCES}.") from None
            if attempt == retries:
                raise DataError(f"downloading {url} failed after {retries} attempts: {getattr(e, 'reason', e)}. "
                                f"Try again later, or {OTHER_SOURCES}.") from None
        wait_s = 2.0 ** (attempt - 1)
        log.warning("download attempt %d of %d failed; retrying in %.0f s", attempt, retries, wait_s)
        time.sleep(wait_s)


def download_tiny_nerf(cfg: Config) -> Scene:
    data = cfg.data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny_nerf_data.npz"
        log.info("downloading %s", data.tiny_nerf_url)
        fetch(data.tiny_nerf_url, path, data.download_retries, data.download_timeout_s)
        digest = sha256_of(path)
        if data.tiny_nerf_sha256 and digest != data.tiny_nerf_sha256.lower():
            raise DataError(f"{data.tiny_nerf_url}: sha256 {digest} does not match the pinned "
                            f"'data.tiny_nerf_sha256' {data.tiny_nerf_sha256}; the file is corrupt or was changed.")
        if not data.tiny_nerf_sha256:
            log.warning("data.tiny_nerf_sha256 is not set: downloaded file has sha256 %s; pin it in params.yaml "
                        "to check future downloads", digest)
        return read_tiny_nerf_npz(path, data.near, data.far)


def load_scene(cfg: Config) -> Scene:
    """The scene ``cfg.data.source`` names, validated (raises ``DataError``)."""
    data = cfg.data
    if data.source == "synthetic":
        s = cfg.synthetic
        log.info("rendering the built-in scene: %d views of %d px", s.num_views, s.image_size)
        out = synthetic.render_scene(num_views=s.num_views, image_size=s.image_size, seed=s.seed,
                                     supersample=s.supersample)
        near = out["near"] if data.near is None else data.near
        far = out["far"] if data.far is None else data.far
        return validate(out["images"], out["poses"], out["focal"], near, far, out["depth"], source="synthetic scene")
    if data.source == "tiny_nerf":
        return download_tiny_nerf(cfg)
    layout = folders.find_layout(data.source)
    if layout is not None:
        return folders.read_scene(*layout, data.background, data.downscale, data.max_views, data.near, data.far)
    path = Path(data.source)
    if path.suffix != ".npz":
        close = difflib.get_close_matches(data.source, ["synthetic", "tiny_nerf"], n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DataError(f"params.yaml: 'data.source' is '{data.source}', which is neither 'synthetic', "
                        f"'tiny_nerf', the path of an .npz file nor a folder with transforms json.{hint}")
    return read_tiny_nerf_npz(path, data.near, data.far)

