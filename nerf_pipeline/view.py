"""The browser viewer: ``nerf-pipeline view`` (or ``python -m nerf_pipeline.view``), built on viser.

Serves a local page (http://127.0.0.1:8080 by default; ``--host``/``--port``) that shows, in the
pipeline's scene frame (z up):

* the training and validation cameras as frustums with their images (sized to the cameras' spacing), the
  scene's box, and the sparse point cloud when the scene has one (COLMAP, structure from motion); the first
  view looks at the scene's centre from outside the cameras (``initial_view``);
* a model of Gaussian splats (``methods.Method.gaussians_for_viewer``) also as viser's
  own Gaussian splats, drawn in the browser (degree-0 colours), which a panel checkbox hides;
* the trained model rendered from the browser's camera: a coarse image at once while the camera
  moves, refined when it stops; RGB, depth or opacity; the render size and time per frame in the
  panel. While ``train`` runs, the latest checkpoint is shown, and reloaded when a new epoch lands;
* a camera-path editor: keyframes from the current view, duration, fps and size, a preview, and
  ``Save``, which writes a nerfstudio ``camera_path.json`` into ``camera_paths/`` for the render stage
  (``render.camera_path``).

It reads the pipeline's outs in a project folder (``models/trained``, else the latest checkpoint in
``models/checkpoint``; ``data/rays``; ``data/cameras.npz``), or a model logged to MLflow
(``--run <run id>``, from the project's store). It renders through the method (``methods.Method.render``), any
method the pipeline trains.

viser has no login: whoever reaches the port drives the viewer. So it binds to 127.0.0.1 unless ``--host`` says
otherwise (and then warns), refuses websocket handshakes from a web page of another origin (a page the user visits
could otherwise reach a viewer on 127.0.0.1), and writes nothing but ``camera_paths/<name>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import http
import inspect
import io
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

from nerf_pipeline.config import MAX_RENDER_FRAMES
from nerf_pipeline.errors import UserError
from nerf_pipeline.trained_folder import METHOD_FILE, MODEL_FILE

log = logging.getLogger("nerf_pipeline.view")

PREVIEW_LONG_SIDE = 96  # pixels of the coarse image rendered while the camera moves
IDLE_S = 0.3  # the camera is still for this long: render at full size
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])  # camera axes: y up, z back (ours) ↔ y down, z forward (viser's)


def _wxyz(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return np.array([w, x, y, z])


def viser_pose(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(wxyz, position)`` in viser's (OpenCV) camera convention of our (OpenGL) camera-to-world [4, 4]."""
    return _wxyz(np.asarray(c2w, np.float64)[:3, :3] @ OPENGL_TO_OPENCV), np.asarray(c2w, np.float64)[:3, 3]


def pipeline_pose(wxyz, position) -> np.ndarray:
    """Our camera-to-world [4, 4] of a viser camera's ``wxyz`` and ``position``."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = wxyz
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix() @ OPENGL_TO_OPENCV
    c2w[:3, 3] = position
    return c2w


def render_size(long_side: int, aspect: float) -> tuple[int, int]:
    """``(height, width)`` with the longer side ``long_side`` and width / height = ``aspect``."""
    if aspect >= 1:
        return max(8, round(long_side / aspect)), long_side
    return long_side, max(8, round(long_side * aspect))


def interpolate_path(keyframes: list[dict], num_frames: int) -> np.ndarray:
    """Poses [num_frames, 4, 4]: positions along a Catmull-Rom curve through the keyframes' and rotations by
    spherical interpolation between theirs (``keyframes``: ``{"c2w": [4, 4]}``, at least one)."""
    from scipy.spatial.transform import Rotation, Slerp

    poses = np.stack([np.asarray(k["c2w"], np.float64) for k in keyframes])
    if len(poses) == 1:
        return np.repeat(poses, num_frames, axis=0)
    s = np.linspace(0.0, len(poses) - 1.0, num_frames)
    index = np.minimum(np.floor(s).astype(int), len(poses) - 2)
    t = (s - index)[:, None]
    p = poses[:, :3, 3]
    p0, p1, p2, p3 = (p[np.clip(index + k, 0, len(p) - 1)] for k in (-1, 0, 1, 2))
    positions = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                       + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    rotations = Slerp(np.arange(len(poses)), Rotation.from_matrix(poses[:, :3, :3]))(s).as_matrix()
    out = np.tile(np.eye(4), (num_frames, 1, 1))
    out[:, :3, :3], out[:, :3, 3] = rotations, positions
    return out


class ModelSource:
    """The model to show (a ``methods.Method``): ``models/trained`` or, while training runs, the newest checkpoint;
    reloaded when it changes. It renders in the mean appearance (no training views are given to it)."""

    def __init__(self, project: Path, run_id: str | None = None, chunk_rays: int = 16384):
        from nerf_pipeline.runtime import tracking

        if run_id is not None and not tracking.is_run_id(run_id):
            raise UserError(f"--run: {run_id!r} is not an MLflow run id (32 hexadecimal characters); the MLflow UI "
                            "shows each run's ID.")
        self.project, self.run_id, self.chunk_rays = project, run_id, chunk_rays
        self.method, self.label, self._stamp = None, "no model yet", None

    @property
    def model(self):
        """The method shown (``method``; None before the first ``refresh``)."""
        return self.method

    def _newest(self):
        if self.run_id:
            return ("run", self.run_id)
        candidates = []
        trained = self.project / "models" / "trained"
        stamp = next((trained / name for name in (METHOD_FILE, MODEL_FILE) if (trained / name).is_file()), None)
        if stamp is not None:
            candidates.append((stamp.stat().st_mtime, trained, "models/trained"))
        meta = self.project / "models" / "checkpoint" / "meta.json"
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
                state = meta.parent / info["state"]
                candidates.append((meta.stat().st_mtime, state, f"checkpoint of epoch {info['epoch']}"))
            except (OSError, ValueError, KeyError):
                pass
        return max(candidates) if candidates else None

    def _load(self, path):
        from nerf_pipeline import methods

        return methods.load(path, chunk_rays=self.chunk_rays)

    def refresh(self) -> bool:
        """Load the newest model if it changed; whether it did."""
        newest = self._newest()
        if newest is None or newest == self._stamp:
            return False
        if newest[0] == "run":
            folder = self._logged_model()
            # the logged method's folder (method.json), or an earlier Logged Model's .keras file
            marker = next(folder.rglob(METHOD_FILE), None)
            path = marker.parent if marker is not None else next(folder.rglob("*.keras"), None)
            if path is None:
                raise UserError(f"--run {self.run_id}: the run logged no model (nothing under model/artifacts).")
            self.method, self.label = self._load(path), f"MLflow run {self.run_id}"
        else:
            self.method, self.label = self._load(newest[1]), newest[2]
        self._stamp = newest
        return True

    def _logged_model(self) -> Path:
        """The folder of the model that run ``run_id`` logged, downloaded from the project's MLflow store (wherever the
        viewer was started), or ``MLFLOW_TRACKING_URI``'s; a ``UserError`` saying what is missing."""
        import mlflow
        from mlflow.exceptions import MlflowException

        from nerf_pipeline.runtime import tracking

        uri = tracking.tracking_uri(self.project)
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            # (opening it would create an empty store there)
            raise UserError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: --run reads the store of the "
                            f"project {self.project}; train there first (dvc repro), or set MLFLOW_TRACKING_URI to the "
                            "store that holds the run.")
        try:
            mlflow.MlflowClient(uri).get_run(self.run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise UserError(f"--run {self.run_id}: no such run in the MLflow store {uri}.") from None
            raise UserError(f"cannot use the MLflow tracking store {uri}: {e.message}") from None
        except Exception as e:  # MLflow raises many types for an unreachable or broken store
            raise UserError(f"cannot use the MLflow tracking store {uri}: {type(e).__name__}: {e}") from None
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path="model/artifacts",
                                                            tracking_uri=uri))
        except Exception as e:  # MlflowException, OSError: the run has no such artifacts, or they cannot be read
            raise UserError(f"--run {self.run_id}: cannot read the model it logged (model/artifacts) from {uri}: "
                            f"{e}") from None


# -- the scene: the views' cameras, the box, the sparse points ------------------------------------------------

VIEW_COLOURS = {"train": (40, 90, 220), "val": (230, 120, 20), "test": (120, 120, 120)}


FRUSTUM_SPACING = 0.3  # a frustum is this fraction of the median distance between neighbouring cameras
DEFAULT_FRUSTUM_SCALE = 0.25  # with fewer than two distinct cameras


def frustum_scale(positions: np.ndarray) -> float:
    """The frustums' size for cameras at ``positions [V, 3]``: ``FRUSTUM_SPACING`` x the median distance from each
    camera to its nearest neighbour, so that neighbours' frustums do not overlap however large the scene."""
    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    if len(positions) < 2:
        return DEFAULT_FRUSTUM_SCALE
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1)
    nearest = nearest[nearest > 1e-9]  # (cameras at the same place)
    return float(FRUSTUM_SPACING * np.median(nearest)) if len(nearest) else DEFAULT_FRUSTUM_SCALE


def initial_view(positions: np.ndarray, bound: float, centre=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """``(position, look_at)`` of a first view that frames the scene: looking at ``centre`` (the scene box's) from
    the direction of the first camera (a view the capture has), 1.5 x as far as the farthest camera, so outside
    their ring (at least 3 ``bound``; from +x, -y, +z without cameras)."""
    centre = np.asarray(centre, np.float64)
    offsets = np.asarray(positions, np.float64).reshape(-1, 3) - centre
    lengths = np.linalg.norm(offsets, axis=-1)
    distance = max(1.5 * float(lengths.max()) if len(lengths) else 0.0, 3.0 * float(bound))
    if len(lengths) and lengths[0] > 1e-9:
        direction = offsets[0] / lengths[0]
    else:
        direction = np.array([1.0, -1.0, 1.0]) / np.sqrt(3.0)
    return centre + distance * direction, centre


def draw_scene(scene, project: Path, bound: float) -> np.ndarray:  # bound: the method's extent()
    """Into viser's ``scene`` (a server's): the frustums of ``project``'s rays' views with their images, the box of
    half-size ``bound`` and the sparse points of ``data/cameras.npz``, where the project has them. Training views are
    drawn where the trained model's pose refinement put them, when it has one (``models/trained/cameras.npz``).
    Returns the cameras' centres ``[V, 3]`` (none: ``[0, 3]``)."""
    positions = _draw_view_cameras(scene, project / "data" / "rays", project / "models" / "trained")
    _draw_box(scene, bound)
    _draw_sparse_points(scene, project / "data" / "cameras.npz")
    return positions


def _draw_view_cameras(scene, rays: Path, model_folder: Path) -> np.ndarray:
    from nerf_pipeline.scenes import ray_files
    from nerf_pipeline.trained_folder import trained_poses

    parts = []
    for part in ray_files.parts(rays) if rays.is_dir() else []:
        views = ray_files.load(rays, part)
        parts.append((part, views, trained_poses(model_folder, views) if part == "train" else views.poses))
    positions = np.concatenate([np.asarray(poses)[:, :3, 3] for _, _, poses in parts]) if parts else np.zeros((0, 3))
    scale = frustum_scale(positions)
    for part, views, poses in parts:
        for i in range(views.num_views):
            thumbnail = np.asarray(views.images[i])[:: max(1, views.height // 64), :: max(1, views.width // 64)]
            fov = 2 * np.arctan(0.5 * views.height / views.intrinsics[i, 1])
            wxyz, position = viser_pose(poses[i])
            scene.add_camera_frustum(f"/cameras/{part}/{i}", fov=float(fov), aspect=views.width / views.height,
                                     scale=scale, color=VIEW_COLOURS[part], image=thumbnail, wxyz=wxyz,
                                     position=position)
    return positions


def draw_gaussians(scene, method, visible: bool = True):
    """A model of Gaussians (``methods.Method.gaussians_for_viewer``) as viser's Gaussian splats (``/splats``,
    replacing earlier ones); its handle, or None for a model of another kind."""
    g = method.gaussians_for_viewer()
    if g is None:
        return None
    return scene.add_gaussian_splats("/splats", g["centers"], g["covariances"], g["rgbs"], g["opacities"],
                                     visible=visible)


def _draw_box(scene, bound: float) -> None:
    corners = np.array([[x, y, z] for x in (-bound, bound) for y in (-bound, bound) for z in (-bound, bound)])
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]  # differ in one axis
    scene.add_line_segments("/bounds", corners[np.array(edges)], colors=(160, 160, 160), thickness=2,
                            thickness_units="screen")


def _draw_sparse_points(scene, cameras: Path) -> None:
    if not cameras.is_file():
        return
    with np.load(cameras) as data:
        if "points" in data.files and len(data["points"]):
            colors = data["point_colors"] if "point_colors" in data.files else (200, 200, 200)
            scene.add_point_cloud("/sparse_points", data["points"], colors, point_size=0.02)


# -- the render loop: the model from each browser tab's camera ------------------------------------------------


class LiveRender:
    """The model rendered from each browser tab's camera (a coarse image as soon as the camera moves, the full one
    once it stops), its panel (status, output, resolution), and the model reloaded when ``source`` changes."""

    def __init__(self, server, source: ModelSource):
        self.server, self.source = server, source
        self.method = source.method
        self.last_render: dict | None = None  # width, height, seconds and stage of the newest image shown
        self.on_reload = None  # called with the method when a newer model is loaded
        self._clients: dict[int, dict] = {}  # per browser tab: its render state
        self._lock = threading.Lock()
        gui = server.gui
        self.status = gui.add_markdown(f"Model: {source.label}")
        self.output = gui.add_dropdown("Output", ("RGB", "Depth", "Opacity"), initial_value="RGB")
        self.resolution = gui.add_slider("Resolution", min=64, max=1024, step=16, initial_value=320)
        self.output.on_update(lambda _: self.rerender_all())
        self.resolution.on_update(lambda _: self.rerender_all())

    def start(self) -> None:
        """Serve every browser tab that connects, and watch for a newer model."""
        self.server.on_client_connect(self._serve_client)
        threading.Thread(target=self._watch_model, daemon=True, name="watch-model").start()

    def render(self, c2w: np.ndarray, fov: float, aspect: float, long_side: int) -> tuple[np.ndarray, float]:
        """The image [H, W, 3] uint8 of the current output for a camera, and the seconds it took."""
        from nerf_pipeline import media
        from nerf_pipeline.methods import Camera

        height, width = render_size(long_side, aspect)
        focal = 0.5 * height / np.tan(0.5 * fov)
        start = time.perf_counter()
        with self._lock:
            out = self.method.render(Camera(c2w, np.array([focal, focal, width / 2, height / 2]), height, width))
        seconds = time.perf_counter() - start
        if self.output.value == "Depth":
            lo, hi = media.depth_range(out["depth"], out["opacity"])
            return media.colorize_depth(out["depth"], out["opacity"], lo, hi), seconds
        if self.output.value == "Opacity":
            return np.repeat(media.to_uint8(out["opacity"])[..., None], 3, axis=-1), seconds
        return media.to_uint8(out["rgb"]), seconds

    def _serve_client(self, client) -> None:
        state = {"moved": time.perf_counter(), "coarse": False, "full": False}
        client.camera.on_update(lambda _: state.update(moved=time.perf_counter(), coarse=False, full=False))
        self._clients[client.client_id] = state
        threading.Thread(target=self._render_loop, args=(client, state), daemon=True,
                         name=f"render-{client.client_id}").start()

    def _render_loop(self, client, state: dict) -> None:
        while client.camera.update_timestamp == 0.0:  # the browser has not sent its camera yet
            time.sleep(0.05)
        while client.client_id in self.server.get_clients():
            idle = time.perf_counter() - state["moved"]
            stage = None if state["full"] else ("full" if idle >= IDLE_S else None if state["coarse"] else "coarse")
            if stage is None:
                time.sleep(0.03)
                continue
            camera = client.camera
            long_side = PREVIEW_LONG_SIDE if stage == "coarse" else int(self.resolution.value)
            image, seconds = self.render(pipeline_pose(camera.wxyz, camera.position), camera.fov, camera.aspect,
                                         long_side)
            client.scene.set_background_image(image, format="jpeg")
            state[stage] = True
            height, width = image.shape[:2]
            self.status.content = (f"Model: {self.source.label}  \n{self.output.value} {width}x{height} in "
                                   f"{seconds * 1000:.0f} ms ({'coarse, moving' if stage == 'coarse' else 'full'})")
            self.last_render = {"width": width, "height": height, "seconds": seconds, "stage": stage}

    def rerender_all(self) -> None:
        for state in self._clients.values():
            state.update(full=False)

    def _watch_model(self) -> None:
        while True:
            time.sleep(2.0)
            try:
                if self.source.refresh():
                    with self._lock:
                        self.method = self.source.method
                    if self.on_reload is not None:
                        self.on_reload(self.method)
                    self.status.content = f"Model: {self.source.label} (reloaded)"
                    self.rerender_all()
            except Exception as e:  # a checkpoint being written, a store hiccup: try again at the next tick
                log.debug("model reload failed: %s", e)


# -- the camera-path panel: keyframes to a camera_path.json for the render stage ------------------------------


class CameraPathPanel:
    """The *Camera path* folder of the panel: keyframes from a tab's camera, duration, fps and size, a preview,
    and ``Save`` to a nerfstudio ``camera_path.json`` under ``project``."""

    def __init__(self, gui, project: Path):
        self.project = project
        self.keyframes: list[dict] = []  # {"c2w": [4, 4] ours, "fov": vertical, radians}
        with gui.add_folder("Camera path"):
            self.info = gui.add_markdown("No keyframes.")
            gui.add_button("Add keyframe").on_click(self.add_keyframe)
            gui.add_button("Clear keyframes").on_click(self.clear_keyframes)
            self.seconds = gui.add_number("Seconds", 4.0, min=0.5, max=600.0, step=0.5)
            self.fps = gui.add_number("FPS", 24, min=1, max=120, step=1)
            self.width = gui.add_number("Width", 640, min=16, max=4096, step=16)
            self.height = gui.add_number("Height", 480, min=16, max=4096, step=16)
            self.file = gui.add_text("File", "camera_path.json", hint=f"A file name ending in .json, saved in "
                                     f"{CAMERA_PATHS}/")
            gui.add_button("Preview").on_click(self.preview)
            gui.add_button("Save").on_click(self._save_clicked)

    def add_keyframe(self, event) -> None:
        camera = event.client.camera
        self.keyframes.append({"c2w": pipeline_pose(camera.wxyz, camera.position), "fov": float(camera.fov)})
        self.info.content = f"{len(self.keyframes)} keyframe(s)."

    def clear_keyframes(self, _) -> None:
        self.keyframes = []
        self.info.content = "No keyframes."

    def poses(self) -> np.ndarray:
        """The path's poses [seconds x fps, 4, 4] through the keyframes."""
        # (the panel's limits are the browser's: a websocket client can send any number)
        num_frames = max(1, round(self.seconds.value * self.fps.value))
        if not num_frames <= MAX_RENDER_FRAMES:
            raise UserError(f"Seconds x FPS makes {num_frames} frames; the render stage takes at most "
                            f"{MAX_RENDER_FRAMES}.")
        return interpolate_path(self.keyframes, num_frames)

    def preview(self, event) -> None:
        if not self.keyframes:
            return
        try:
            poses = self.poses()
        except UserError as e:
            self.info.content = f"No preview: {e}"
            return
        for pose in poses:
            wxyz, position = viser_pose(pose)
            with event.client.atomic():
                event.client.camera.wxyz, event.client.camera.position = wxyz, position
            time.sleep(1.0 / self.fps.value)

    def save(self, name: str | None = None) -> Path:
        """Write the keyframes' interpolated path as a ``camera_path.json`` named ``name`` (else the panel's *File*)
        in the project's ``camera_paths/``; its path. A ``UserError`` for a name that is not a plain file name
        ending in .json (``camera_path_file``)."""
        from nerf_pipeline.scenes.camera_paths import write_camera_path

        target = camera_path_file(self.project, self.file.value if name is None else name)
        poses = self.poses()
        target.parent.mkdir(parents=True, exist_ok=True)
        fov = float(np.degrees(np.mean([k["fov"] for k in self.keyframes])))
        keyframes = [{"camera_to_world": np.asarray(k["c2w"]).reshape(-1).tolist(), "fov": float(np.degrees(k["fov"]))}
                     for k in self.keyframes]
        write_camera_path(target, poses, fov, int(self.width.value), int(self.height.value),
                          float(self.fps.value), keyframes=keyframes)
        return target

    def _save_clicked(self, _) -> None:
        """The *Save* button: what went wrong is said in the panel, to whoever pressed it."""
        if not self.keyframes:
            self.info.content = "Not saved: add a keyframe first (*Add keyframe* takes the current view)."
            return
        try:
            target = self.save().relative_to(self.project)
        except UserError as e:
            self.info.content = f"Not saved: {e}"
            return
        except OSError as e:
            self.info.content = f"Not saved: cannot write {e.filename or 'the file'}: {e.strerror or e}."
            return
        self.info.content = f"Saved {target}: render it with `dvc exp run -S render.camera_path={target}`."


CAMERA_PATHS = "camera_paths"  # the project's folder of camera paths, the only place the viewer writes


def camera_path_file(project: Path, name: str) -> Path:
    """``project/camera_paths/<name>``: ``name`` is typed into the panel by whoever reaches the viewer, so only a
    plain file name ending in .json is taken (no folder, no ``..``, not hidden); a ``UserError`` otherwise."""
    plain = (isinstance(name, str) and name == Path(name).name and not name.startswith(".")
             and not any(c in name for c in "/\\\0") and name.endswith(".json") and len(name.encode()) <= 255)
    if not plain:
        raise UserError(f"File: {name!r} is not a plain file name ending in .json; camera paths are saved in "
                        f"{CAMERA_PATHS}/ only (e.g. orbit.json).")
    return Path(project) / CAMERA_PATHS / name


# -- who may drive the viewer: this machine, and the viewer's own page ----------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """What to warn of when the viewer binds to ``host``: None on loopback."""
    if is_loopback(host):
        return None
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (f"serving on {address}: anyone who can reach this port can drive the viewer (it has no login): see the "
            f"scene and the model, and save camera paths into {CAMERA_PATHS}/. From another machine, "
            f"`ssh -L {port}:127.0.0.1:{port} <this machine>` to a viewer on the default --host is safer.")


def own_hosts(host: str) -> set[str]:
    """The names a browser may use for the viewer bound to ``host`` (besides loopback): that address, or for
    ``0.0.0.0`` / ``::`` this machine's name and addresses."""
    if host not in ("0.0.0.0", "::", ""):
        return {host.lower().strip("[]")}
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    with contextlib.suppress(OSError):
        names |= {info[4][0].split("%")[0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    with contextlib.suppress(ImportError, OSError):
        import psutil

        names |= {a.address.split("%")[0] for addresses in psutil.net_if_addrs().values() for a in addresses
                  if a.family in (socket.AF_INET, socket.AF_INET6)}
    return names


def allowed_origin(origin: str, port: int, hosts: set[str]) -> bool:
    """Whether a web page at ``origin`` (a request's Origin header) may drive the viewer on ``port``: a page of this
    machine (localhost, 127.0.0.1, ::1, at any port: an SSH tunnel's may differ), or the viewer's own page reached
    through one of ``hosts`` (``own_hosts``) at ``port``. Not ``null`` (a file or sandboxed page), nor anything else."""
    try:
        parts = urllib.parse.urlsplit(origin)
        origin_port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is no number
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return is_loopback(parts.hostname) or (parts.hostname in hosts and origin_port == port)


def _refusing_foreign_origins(process_request, hosts: set[str]):
    """A websockets ``process_request`` that answers 403 to a request from a page of another origin
    (``allowed_origin``; a request without an Origin header is no browser page's, and passes), then defers to
    ``process_request`` (viser's, which serves its page over the same port)."""
    refused: set[str] = set()

    async def check(connection, request):
        origins = request.headers.get_all("Origin")
        if origins and (len(origins) > 1 or not allowed_origin(origins[0], connection.local_address[1], hosts)):
            if origins[0] not in refused:  # once per origin: a page may retry for ever
                refused.add(origins[0])
                log.warning("refused a connection from a web page at %s: only this viewer's own page may drive it",
                            origins[0])
            return connection.respond(http.HTTPStatus.FORBIDDEN, "A page of another origin may not drive this "
                                      "viewer.\n")
        if process_request is None:
            return None
        response = process_request(connection, request)
        return await response if inspect.isawaitable(response) else response

    return check


_SERVE_SWAP = threading.Lock()


@contextlib.contextmanager
def _origin_checked(host: str):
    """While viser starts its server, hand it a ``process_request`` that refuses pages of other origins. viser (1.x)
    takes every Origin and has no option for it; it builds its server with ``websockets.asyncio.server.serve``, in
    its own thread but before ``ViserServer`` returns, so that function is wrapped for that moment only. Yields a
    list that holds True once the wrapper was used: a viser that starts its server otherwise is refused."""
    import websockets.asyncio.server as websockets_server

    used, hosts = [], own_hosts(host)
    original = websockets_server.serve

    def serve(*args, process_request=None, **kwargs):
        used.append(True)
        return original(*args, process_request=_refusing_foreign_origins(process_request, hosts), **kwargs)

    with _SERVE_SWAP:
        websockets_server.serve = serve
        try:
            yield used
        finally:
            websockets_server.serve = original


class Viewer:
    """A project's viewer on ``host:port``: the drawn scene, the live render and the camera-path panel."""

    def __init__(self, project: Path, host: str = "127.0.0.1", port: int = 8080, run_id: str | None = None,
                 chunk_rays: int = 16384):
        import viser

        self.project = Path(project)
        self.source = ModelSource(self.project, run_id, chunk_rays)
        if not self.source.refresh():
            raise UserError(f"no trained model in {self.project / 'models'} (run `dvc repro`, or at least the train "
                            "stage) and no --run given.")
        logging.getLogger("viser").setLevel(logging.WARNING)
        warning = exposure_warning(host, port)
        if warning:
            log.warning(warning)
        # (viser prints a banner of its own; main() says the URL)
        with _origin_checked(host) as checked, contextlib.redirect_stdout(io.StringIO()):
            self.server = viser.ViserServer(host=host, port=port, verbose=False)
        if not checked:
            self.server.stop()
            raise RuntimeError(f"viser {viser.__version__} did not start its server through "
                               "websockets.asyncio.server.serve: the viewer could not refuse pages of other origins")
        self.server.scene.set_up_direction("+z")
        positions = draw_scene(self.server.scene, self.project, self.source.method.extent())
        position, look_at = initial_view(positions, self.source.method.extent())
        self.server.initial_camera.position, self.server.initial_camera.look_at = position, look_at
        self.live = LiveRender(self.server, self.source)  # (its controls first in the panel)
        self.splats = draw_gaussians(self.server.scene, self.source.method)
        self.show_splats = None  # the panel's checkbox, for a model of Gaussians
        if self.splats is not None:
            show = self.show_splats = self.server.gui.add_checkbox("Gaussians (in the browser)", initial_value=True)

            def redraw(method) -> None:
                self.splats = draw_gaussians(self.server.scene, method, visible=show.value)

            def toggle(_) -> None:
                if self.splats is not None:
                    self.splats.visible = show.value

            show.on_update(toggle)
            self.live.on_reload = redraw
        self.camera_path = CameraPathPanel(self.server.gui, self.project)
        self.live.start()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nerf-pipeline view", description=__doc__.strip().splitlines()[0])
    parser.add_argument("project", nargs="?", default=".", help="the project folder (default: here)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--run", default=None, help="show the model logged to MLflow by this run instead")
    args = parser.parse_args(argv)
    from nerf_pipeline.runtime import cli

    cli.quiet_console()
    logging.basicConfig(level=logging.INFO, format="[view] %(message)s", stream=sys.stderr)
    try:
        viewer = Viewer(Path(args.project), args.host, args.port, args.run)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # (the port viser bound: the next one up when the one asked for is taken)
    print(f"[view] open http://{args.host}:{viewer.server.get_port()} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        viewer.server.stop()


if __name__ == "__main__":
    main()
