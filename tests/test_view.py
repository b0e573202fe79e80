"""The browser viewer in a real browser (headless Chromium): it renders the model from the browser's camera,
changes when the camera moves, binds to loopback only, and saves camera paths the render stage reads."""

from __future__ import annotations

import shutil
import time
import types

import numpy as np
import pytest
import tensorflow as tf
from conftest import free_port, tiny_params, write_rays

from nerf_pipeline import camera, config
from nerf_pipeline.model.nerf import build_nerf, compile_for_training
from nerf_pipeline.scenes import ray_files
from nerf_pipeline.scenes.camera_paths import read_camera_path
from nerf_pipeline.training import datasets

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with the pipeline's outs: rays of the built-in scene and a briefly trained model."""
    path = tmp_path_factory.mktemp("viewed")
    write_rays(path / "data" / "rays", num_views=9, image_size=32, num_val=2)
    cfg = config.from_dict(tiny_params())
    part = ray_files.load(path / "data" / "rays", "train")
    model = build_nerf(cfg.active, near=part.near, far=part.far, contracted=False, bound=1.5, background=0.0, seed=0)
    compile_for_training(model, cfg.active.optimizer, total_steps=60, jit_compile=True)
    model.fit(datasets.train_dataset(part, cfg.active.batch, seed=0), steps_per_epoch=60, epochs=1, verbose=0,
              callbacks=model.training_callbacks())
    (path / "models" / "trained").mkdir(parents=True)
    model.save(path / "models" / "trained" / "model.keras")
    return path


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver): "
                    "the viewer's browser test did not run")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=800,600", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    raise AssertionError("timed out")


def connected(viewer, browser, port: int):
    """The browser on the viewer's page; viser's handle of its tab."""
    browser.get(f"http://127.0.0.1:{port}")
    wait_for(lambda: browser.find_elements("tag name", "canvas"))
    wait_for(lambda: len(viewer.server.get_clients()) == 1)
    (client,) = viewer.server.get_clients().values()
    return client


def canvas_image(browser) -> np.ndarray:
    """The browser's canvas left of the control panel: ``[H, W, 3]`` float32 in 0..255."""
    png = browser.find_element("tag name", "canvas").screenshot_as_png
    image = tf.io.decode_png(png, channels=3).numpy().astype(np.float32)
    return image[:, : image.shape[1] // 2]


def browser_view(viewer, client, browser, position=None, until=None, timeout=60.0) -> np.ndarray:
    """The browser's view (its canvas, left of the control panel) from ``position`` (looking at the origin; None:
    where it is), once the viewer's full render for it is shown: ``[H, W, 3]`` float32 in 0..255.

    ``until(image) -> bool``: screenshots are taken until it holds or ``timeout`` s pass (the last one is returned,
    for the caller's assert to report); a loaded machine can take seconds to draw what arrived."""
    from nerf_pipeline.view import viser_pose

    viewer.live.last_render = None
    if position is None:
        viewer.live.rerender_all()
    else:
        wxyz, origin = viser_pose(camera.look_at(position))
        with client.atomic():
            client.camera.wxyz, client.camera.position = wxyz, origin
    wait_for(lambda: (viewer.live.last_render or {}).get("stage") == "full")
    time.sleep(1.5)  # the image reaches the browser and is drawn
    image = canvas_image(browser)
    deadline = time.time() + timeout
    while until is not None and not until(image) and time.time() < deadline:
        time.sleep(0.5)
        image = canvas_image(browser)
    return image


def test_the_viewer_renders_in_a_browser_and_follows_its_camera(project, browser, tmp_path):
    import psutil

    from selenium.webdriver.common.keys import Keys

    from nerf_pipeline.view import Viewer

    port = free_port()
    viewer = Viewer(project, port=port)
    try:
        listening = [c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"]
        assert listening and set(listening) <= {"127.0.0.1"}, listening  # this machine only, by default

        client = connected(viewer, browser, port)
        def look_from(position, until=None) -> np.ndarray:
            return browser_view(viewer, client, browser, position, until)

        first = look_from([0.0, -4.0, 2.0], until=lambda im: np.median(im) < 60 and im.std() > 10)
        # The render (black behind the scene) replaced viser's white background, and it is not blank.
        assert np.median(first) < 60 and first.std() > 10
        shown = viewer.live.last_render
        assert max(shown["width"], shown["height"]) == viewer.live.resolution.value  # full size
        second = look_from([4.0, 0.0, 1.0], until=lambda im: np.abs(im - first).mean() > 5)
        assert np.abs(second - first).mean() > 5  # the camera moved: so did the image

        # the camera-path editor: two keyframes, 1 s at 6 fps, saved where the render stage reads it
        for position in ([0.0, -4.0, 2.0], [4.0, 0.0, 2.0]):
            look_from(position)
            viewer.camera_path.add_keyframe(types.SimpleNamespace(client=client))
        viewer.camera_path.seconds.value, viewer.camera_path.fps.value = 1.0, 6
        viewer.camera_path.width.value, viewer.camera_path.height.value = 64, 48
        saved = viewer.camera_path.save("two_keys.json")  # into camera_paths/, where the render stage reads it
        path = read_camera_path(saved)
        assert len(path.poses) == 6 and (path.width, path.height) == (64, 48)
        np.testing.assert_allclose(path.poses[0], camera.look_at([0.0, -4.0, 2.0]), atol=1e-4)
        np.testing.assert_allclose(path.poses[-1], camera.look_at([4.0, 0.0, 2.0]), atol=1e-4)
        assert saved == project / "camera_paths" / "two_keys.json"

        # The File field and the Save button as the browser drives them (any websocket client could): a name that
        # climbs out of camera_paths/ is refused, in the panel, and nothing is written.
        field = browser.find_element("xpath", "//label[normalize-space()='File']/following::input[1]")
        browser.execute_script("arguments[0].scrollIntoView()", field)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("../outside.json")
        wait_for(lambda: viewer.camera_path.file.value == "../outside.json", timeout=30)
        browser.execute_script("arguments[0].click()",
                               browser.find_element("xpath", "//button[normalize-space()='Save']"))
        wait_for(lambda: "is not a plain file name ending in .json" in browser.find_element("tag name", "body").text,
                 timeout=30)
        assert viewer.camera_path.info.content.startswith("Not saved:")
        assert not (project / "outside.json").exists() and not (project.parent / "outside.json").exists()
    finally:
        viewer.server.stop()



@pytest.fixture(scope="module")
def splats_project(tmp_path_factory):
    """A project whose trained model is Gaussians: 300 green ones around the origin (of the splats' own folder
    layout, as the train stage writes it), beside rays of the built-in scene."""
    from nerf_pipeline import trained_folder
    from nerf_pipeline.splats import gaussians
    from nerf_pipeline.splats.method import SplatsMethod

    path = tmp_path_factory.mktemp("viewed_splats")
    write_rays(path / "data" / "rays", num_views=9, image_size=32, num_val=2)
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (300, 3))
    arrays = gaussians.initial_arrays(points, np.tile([0.1, 0.9, 0.1], (len(points), 1)), 0.95)
    folder = path / "models" / "trained"
    folder.mkdir(parents=True)
    SplatsMethod(gaussians.Gaussians(arrays), 0.0, 1.5).save(folder)
    trained_folder.write_method(folder, "splats")
    return path


def green_share(image: np.ndarray) -> float:
    """The share of ``image``'s pixels that are clearly green (the splats' colour; grey has none)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return float(np.mean((g > r + 60) & (g > b + 60)))


def test_the_viewer_shows_splats_that_the_browser_draws(splats_project, browser):
    """The Gaussians go to the browser as viser's splats and Chromium draws them (WebGL), over the viewer's own
    render, here its grey opacity output: every green pixel is the browser's; the panel's checkbox hides them."""
    from nerf_pipeline.view import Viewer

    port = free_port()
    viewer = Viewer(splats_project, port=port)
    try:
        assert viewer.source.method.name == "splats" and viewer.show_splats is not None
        client = connected(viewer, browser, port)
        viewer.live.output.value = "Opacity"  # the server's render in grey: green can only be the browser's splats
        shown = browser_view(viewer, client, browser, [0.0, -3.0, 1.5], until=lambda im: green_share(im) > 0.02)
        assert viewer.live.last_render["stage"] == "full"
        assert green_share(shown) > 0.02, green_share(shown)
        viewer.show_splats.value = False
        hidden = browser_view(viewer, client, browser, until=lambda im: green_share(im) < 0.002)
        assert green_share(hidden) < 0.002, green_share(hidden)
        # the server's render still shows the Gaussians' opacity where they are: the image is no blank
        assert hidden.std() > 10
    finally:
        viewer.server.stop()
