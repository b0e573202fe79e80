"""The browser viewer: ``nerf-pipeline view`` (or ``python -m nerf_pipeline.view``), built on viser.

Serves a local page (http://127.0.0.1:8080 by default; ``--host``/``--port``) that shows, in the
pipeline's scene frame (z up):

* the training and validation cameras as frustums with their images, the scene's box, and the
  sparse point cloud when the scene has one (COLMAP, structure from motion);
* the trained model rendered from the browser's camera: a coarse image at once while the camera
  moves, refined when it stops; RGB, depth or opacity; the render size and time per frame in the
  panel. While ``train`` runs, the latest checkpoint is shown, and reloaded when a new epoch lands;
* a camera-path editor: keyframes from the current view, duration, fps and size, a preview, and
  ``Save``, which writes a nerfstudio ``camera_path.json`` into ``camera_paths/`` for the render stage
  (``render.camera_path``).

It reads the pipeline's outs in a project folder (``models/trained``, else the latest checkpoint in
``models/checkpoint``; ``data/rays``; ``data/cameras.npz``), or a model logged to MLflow
(``--run <run id>``, from the project's store). Rendering uses the pipeline's own renderer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

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
    positions = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    rotations = Slerp(np.arange(len(poses)), Rotation.from_matrix(poses[:, :3, :3]))(s).as_matrix()
    out = np.tile(np.eye(4), (num_frames, 1, 1))
    out[:, :3, :3], out[:, :3, 3] = rotations, positions
    return out


class ModelSource:
    """The model to show: ``models/trained`` or, while training runs, the newest checkpoint; reloaded when it changes."""

    def __init__(self, project: Path, run_id: str | None = None):
        self.project, self.run_id = project, run_id
        self.model, self.label, self._stamp = None, "no model yet", None

    def _newest(self):
        if self.run_id:
            return ("run", self.run_id)
        candidates = []
        trained = self.project / "models" / "trained" / "model.keras"
        if trained.is_file():
            candidates.append((trained.stat().st_mtime, trained, "models/trained"))
        meta = self.project / "models" / "checkpoint" / "meta.json"
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
                state = meta.parent / info["state"]
                candidates.append((meta.stat().st_mtime, state, f"checkpoint of epoch {info['epoch']}"))
            except (OSError, ValueError, KeyError):
                pass
        return max(candidates) if candidates else None

    def refresh(self) -> bool:
        """Load the newest model if it changed; whether it did."""
        from nerf_pipeline.model.nerf import load_model

        newest = self._newest()
        if newest is None or newest == self._stamp:
            return False
        if newest[0] == "run":
            import mlflow

            from nerf_pipeline.runtime import tracking

            mlflow.set_tracking_uri(tracking.tracking_uri())
            folder = mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path="model/artifacts")
            self.model, self.label = load_model(next(Path(folder).rglob("*.keras"))), f"MLflow run {self.run_id}"
        else:
            self.model, self.label = load_model(newest[1]), newest[2]
        self._stamp = newest
        return True


# -- the scene: the views' cameras, the box, the sparse points ------------------------------------------------

VIEW_COLOURS = {"train": (40, 90, 220), "val": (230, 120, 20), "test": (120, 120, 120)}


def draw_scene(scene, project: Path, bound: float) -> None:
    """Into viser's ``scene`` (a server's): the frustums of ``project``'s rays' views with their images, the box of
    half-size ``bound`` and the sparse points of ``data/cameras.npz``, where the project has them. Training views are
    drawn where the trained model's pose refinement put them, when it has one (``models/trained/cameras.npz``)."""
    _draw_view_cameras(scene, project / "data" / "rays", project / "models" / "trained")
    _draw_box(scene, bound)
    _draw_sparse_points(scene, project / "data" / "cameras.npz")


def _draw_view_cameras(scene, rays: Path, model_folder: Path) -> None:
    from nerf_pipeline.model.nerf import trained_poses
    from nerf_pipeline.scenes import ray_files

    for part in ray_files.parts(rays) if rays.is_dir() else []:
        views = ray_files.load(rays, part)
        poses = trained_poses(model_folder, views) if part == "train" else views.poses
        for i in range(views.num_views):
            thumbnail = np.asarray(views.images[i])[:: max(1, views.height // 64), :: max(1, views.width // 64)]
            fov = 2 * np.arctan(0.5 * views.height / views.intrinsics[i, 1])
            wxyz, position = viser_pose(poses[i])
            scene.add_camera_frustum(f"/cameras/{part}/{i}", fov=float(fov), aspect=views.width / views.height,
                                     scale=0.25, color=VIEW_COLOURS[part], image=thumbnail, wxyz=wxyz,
                                     position=position)


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

    def __init__(self, server, source: ModelSource, chunk_rays: int):
        from nerf_pipeline.model.renderer import ChunkedRenderer

        self.server, self.source, self.chunk_rays = server, source, chunk_rays
        self._renderer_class = ChunkedRenderer
        self.renderer = ChunkedRenderer(source.model, chunk_rays)
        self.last_render: dict | None = None  # width, height, seconds and stage of the newest image shown
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
        from nerf_pipeline import camera, media

        height, width = render_size(long_side, aspect)
        focal = 0.5 * height / np.tan(0.5 * fov)
        start = time.perf_counter()
        with self._lock:
            out = self.renderer(*camera.generate_rays(c2w, height, width, [focal, focal, width / 2, height / 2]))
        seconds = time.perf_counter() - start
        if self.output.value == "Depth":
            lo, hi = media.depth_range(out["depth"], out["acc"])
            return media.colorize_depth(out["depth"], out["acc"], lo, hi), seconds
        if self.output.value == "Opacity":
            return np.repeat(media.to_uint8(out["acc"])[..., None], 3, axis=-1), seconds
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
                        self.renderer = self._renderer_class(self.source.model, self.chunk_rays)
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
            self.file = gui.add_text("File", "camera_paths/camera_path.json")
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
        return interpolate_path(self.keyframes, max(1, round(self.seconds.value * self.fps.value)))

    def preview(self, event) -> None:
        if not self.keyframes:
            return
        for pose in self.poses():
            wxyz, position = viser_pose(pose)
            with event.client.atomic():
                event.client.camera.wxyz, event.client.camera.position = wxyz, position
            time.sleep(1.0 / self.fps.value)

    def save(self, name: str | None = None) -> Path:
        """Write the keyframes' interpolated path as a ``camera_path.json`` (``name``, else the panel's *File*,
        relative to the project); its path."""
        from nerf_pipeline.scenes.camera_paths import write_camera_path

        target = self.project / (name or self.file.value)
        target.parent.mkdir(parents=True, exist_ok=True)
        fov = float(np.degrees(np.mean([k["fov"] for k in self.keyframes])))
        keyframes = [{"camera_to_world": np.asarray(k["c2w"]).reshape(-1).tolist(), "fov": float(np.degrees(k["fov"]))}
                     for k in self.keyframes]
        write_camera_path(target, self.poses(), fov, int(self.width.value), int(self.height.value),
                          float(self.fps.value), keyframes=keyframes)
        return target

    def _save_clicked(self, _) -> None:
        if self.keyframes:
            target = self.save().relative_to(self.project)
            self.info.content = f"Saved {target}: render it with `dvc exp run -S render.camera_path={target}`."


class Viewer:
    """A project's viewer on ``host:port``: the drawn scene, the live render and the camera-path panel."""

    def __init__(self, project: Path, host: str = "127.0.0.1", port: int = 8080, run_id: str | None = None,
                 chunk_rays: int = 16384):
        import viser

        self.project = Path(project)
        self.source = ModelSource(self.project, run_id)
        if not self.source.refresh():
            raise SystemExit(f"error: no trained model in {self.project / 'models'} (run `dvc repro`, or at least "
                             "the train stage) and no --run given.")
        logging.getLogger("viser").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints a banner of its own; main() says the URL
            self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("+z")
        draw_scene(self.server.scene, self.project, self.source.model.space.bound)
        self.live = LiveRender(self.server, self.source, chunk_rays)  # (its controls first in the panel)
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
    viewer = Viewer(Path(args.project), args.host, args.port, args.run)
    print(f"[view] open http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        viewer.server.stop()


if __name__ == "__main__":
    main()
