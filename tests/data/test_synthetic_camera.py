from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from occbench.data.frame import Camera
from occbench.data.raycast import Primitives, intersect_ground, trace
from occbench.data.synthetic import SceneConfig, build_scene
from occbench.data.synthetic_camera import CLASS_COLOURS, CameraConfig, render_camera
from occbench.data.taxonomy import CLASS_ID

PARAMS = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
SCENE_CONFIG = SceneConfig.from_dict(PARAMS["datasets"]["synthetic"]["scene"])
HEIGHT = 1.8
# The rig of params.yaml: a forward camera a little ahead of and below the LiDAR, looking slightly down.
FRONT = CameraConfig(name="front", width=320, height=192, hfov_deg=90.0, position=(0.5, 0.0, -0.3), pitch_deg=-5.0)
# A small, turned and tilted camera off the LiDAR's axis, to catch convention slips.
SIDE = CameraConfig("side", width=160, height=96, hfov_deg=70.0, position=(0.3, 0.2, -0.4),
                    yaw_deg=35.0, pitch_deg=-10.0)


@dataclass(frozen=True)
class HandScene:
    """The part of a synthetic Scene that cameras read."""

    layout: object
    primitives: tuple[Primitives, ...]


class Road:
    def ground_class(self, xy: np.ndarray) -> np.ndarray:
        return np.full(len(xy), CLASS_ID["road"], dtype=np.uint8)


def lidar_pose(yaw: float = 0.0, x: float = 0.0, y: float = 0.0) -> np.ndarray:
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    pose[:3, 3] = x, y, HEIGHT
    return pose


def boxes(*rows: tuple[list[float], str]) -> Primitives:
    return Primitives(
        "box", np.array([r for r, _ in rows], dtype=float),
        np.array([CLASS_ID[name] for _, name in rows], np.uint8),
        np.arange(1, len(rows) + 1, dtype=np.int32), np.full(len(rows), 0.5),
    )


def classify(rgb: np.ndarray) -> np.ndarray:
    """The class whose base colour has the nearest chromaticity: shading scales all channels alike."""
    chroma = rgb / np.maximum(rgb.sum(-1, keepdims=True), 1)
    reference = CLASS_COLOURS / CLASS_COLOURS.sum(-1, keepdims=True)
    return np.linalg.norm(chroma[..., None, :] - reference, axis=-1).argmin(-1)


def world_hits(scene, origin: np.ndarray, dirs: np.ndarray):
    """Range and class of the first surface along unit rays ``dirs`` (world) from ``origin``."""
    traced = trace(scene.primitives, origin, dirs)
    ground_range, _ = intersect_ground(origin, dirs)
    on_ground = ground_range < traced.range
    semantic = traced.semantic.astype(np.int64)
    ground_xy = origin[:2] + ground_range[on_ground, None] * dirs[on_ground, :2]
    semantic[on_ground] = scene.layout.ground_class(ground_xy)
    return np.minimum(ground_range, traced.range), semantic


def camera_origin(pose: np.ndarray, config: CameraConfig) -> np.ndarray:
    return pose[:3, :3] @ np.asarray(config.position) + pose[:3, 3]


@pytest.fixture(scope="module")
def street():
    scene = build_scene(np.random.default_rng(7), SCENE_CONFIG)
    return scene, lidar_pose(yaw=-0.4, x=0.7, y=0.5)


def test_images_are_rgb_uint8_deterministic_and_calibrated(street):
    scene, pose = street
    camera = render_camera(scene, pose, FRONT)
    assert isinstance(camera, Camera)
    assert camera.image.dtype == np.uint8 and camera.image.shape == (192, 320, 3)
    assert render_camera(scene, pose, FRONT).image.tobytes() == camera.image.tobytes()
    assert len(np.unique(camera.image.reshape(-1, 3), axis=0)) > 100  # a picture, not a fill
    np.testing.assert_allclose(camera.intrinsics, [[160, 0, 160], [0, 160, 96], [0, 0, 1]])
    rotation = camera.lidar_to_camera[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(rotation), 1.0)
    # The mounting point is the camera centre; LiDAR up is image up (-y) give or take the pitch.
    position = np.asarray(FRONT.position)
    np.testing.assert_allclose(camera.lidar_to_camera[:3, :3] @ position + camera.lidar_to_camera[:3, 3],
                               0, atol=1e-12)
    assert (rotation @ [0, 0, 1.0])[1] < -0.99


def test_each_pixel_shows_what_its_calibrated_ray_hits(street):
    scene, pose = street
    camera = render_camera(scene, pose, SIDE)
    # Unproject every pixel centre with K and lidar_to_camera alone, trace it, project the hit back.
    columns, rows = np.meshgrid(np.arange(SIDE.width) + 0.5, np.arange(SIDE.height) + 0.5)
    pixels = np.stack([columns, rows], -1).reshape(-1, 2)
    rays = np.column_stack([pixels, np.ones(len(pixels))]) @ np.linalg.inv(camera.intrinsics).T
    rays = rays @ camera.lidar_to_camera[:3, :3]  # camera -> LiDAR axes
    rays = rays @ pose[:3, :3].T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    origin = camera_origin(pose, SIDE)
    distance, semantic = world_hits(scene, origin, rays)
    hit = np.isfinite(distance)
    assert 0.3 < hit.mean() < 1.0  # both surfaces and sky in view
    points = origin + distance[hit, None] * rays[hit]
    projected, visible = camera.project((points - pose[:3, 3]) @ pose[:3, :3])
    assert visible.all()
    assert np.abs(projected - pixels[hit]).max() < 0.5
    shown = camera.image.reshape(-1, 3)
    assert (classify(shown[hit]) == semantic[hit]).mean() >= 0.99
    sky = shown[~hit].astype(int)
    assert (sky[:, 2] > sky[:, 0] + 20).all()


def test_a_visible_primitive_centre_projects_onto_its_class_colour(street):
    scene, pose = street
    camera = render_camera(scene, pose, FRONT)
    origin = camera_origin(pose, FRONT)
    checked = matched = 0
    for group in scene.primitives:
        if group.kind == "cylinder":
            centres = np.column_stack([group.params[:, :2], group.params[:, 2:4].mean(1)])
        else:
            centres = group.params[:, :3]
        pixels, visible = camera.project((centres - pose[:3, 3]) @ pose[:3, :3])
        towards = centres - origin
        length = np.linalg.norm(towards, axis=1)
        distance, semantic = world_hits(scene, origin, towards / length[:, None])
        # Seen: the first surface towards the centre is this primitive's class, before the centre.
        seen = visible & (semantic == group.semantic) & (distance < length)
        column, row = np.floor(pixels[seen]).astype(int).T
        checked += seen.sum()
        matched += (classify(camera.image[row, column]) == group.semantic[seen]).sum()
    assert checked >= 10
    assert matched / checked >= 0.9


def test_a_car_ahead_has_the_car_colour_up_to_shading():
    car = boxes(([12.0, 0.0, 0.9, 4.5, 1.9, 1.4, 0.2], "car"))
    camera = render_camera(HandScene(Road(), (car,)), lidar_pose(), FRONT)
    centre = np.array([[12.0, 0.0, 0.9 - HEIGHT]])
    (column, row), = np.floor(camera.project(centre)[0]).astype(int)
    rgb = camera.image[row, column].astype(float)
    colour = CLASS_COLOURS[CLASS_ID["car"]]
    scale = rgb @ colour / (colour @ colour)
    assert 0.2 < scale <= 1.0
    np.testing.assert_allclose(rgb, scale * colour, atol=1.5)


def test_a_wall_edge_splits_the_image_where_it_projects():
    # A thin wall 20 m ahead whose edge projects 0.3 px right of a pixel boundary: the
    # pixel holding the edge's projection already shows the wall, its left neighbour not.
    level = replace(FRONT, position=(0.0, 0.0, 0.0), pitch_deg=0.0)
    edge_y = -1.2875  # u = 160 - 160 * y / 20 = 170.3
    wall = boxes(([20.01, (edge_y - 30.0) / 2, 5.0, 0.02, 30.0 + edge_y, 10.0, 0.0], "building"))
    camera = render_camera(HandScene(Road(), (wall,)), lidar_pose(), level)
    (u, v), = camera.project(np.array([[20.0, edge_y, 0.0]]))[0]
    assert np.isclose(u, 170.3)
    labels = classify(camera.image[int(v)])
    assert labels[int(u)] == CLASS_ID["building"] and labels[int(u) - 1] != CLASS_ID["building"]


def test_a_camera_turned_around_sees_what_is_behind(street):
    ahead_and_behind = boxes(([12.0, 0.0, 0.9, 4.5, 1.9, 1.4, 0.0], "car"),
                             ([-12.0, 0.0, 1.5, 8.0, 2.5, 3.0, 0.0], "truck"))
    scene = HandScene(Road(), (ahead_and_behind,))
    front = replace(FRONT, position=(0.0, 0.0, -0.3), pitch_deg=0.0)
    back = replace(front, name="back", yaw_deg=180.0)
    for config, seen, unseen in ((front, "car", "truck"), (back, "truck", "car")):
        labels = classify(render_camera(scene, lidar_pose(), config).image)
        assert labels[config.height // 2 + 5, config.width // 2] == CLASS_ID[seen]
        assert not (labels == CLASS_ID[unseen]).any()
    # Turning the camera on its mount equals turning the LiDAR carrying it.
    street_scene, pose = street
    turned = render_camera(street_scene, pose, back).image
    half_turn = np.diag([-1.0, -1.0, 1.0, 1.0])
    carried = render_camera(street_scene, pose @ half_turn, front).image
    assert (np.abs(turned.astype(int) - carried).max(-1) <= 1).mean() >= 0.999


def test_camera_config_reads_dicts_and_rejects_bad_values():
    config = CameraConfig.from_dict(
        {"name": "front", "width": 320, "height": 192, "hfov_deg": 90, "position": [0.5, 0, -0.3],
         "yaw_deg": 0, "pitch_deg": -5}
    )
    assert config == FRONT
    with pytest.raises(ValueError, match="unknown key"):
        CameraConfig.from_dict({"name": "front", "width": 320, "height": 192, "hfov_deg": 90, "fov": 1})
    with pytest.raises(ValueError, match="hfov_deg"):
        replace(FRONT, hfov_deg=180.0)
    with pytest.raises(ValueError, match="name"):
        replace(FRONT, name="front/left")
