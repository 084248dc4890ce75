"""World model of one synthetic video: sampling a scene and answering "where / what colour at time t".

A scene is a plain JSON-serialisable dict (the ground truth written to `ground_truth/<id>.json`), so the
renderer, the annotation templates and the tests all read the same source of truth. Frame `i` shows the
world at time `i / fps`; an event at time `t` is visible in every frame with `i / fps >= t`.

Objects:
- `main`: a palette-coloured shape moving at constant velocity; it leaves one side of the frame and comes
  back on the opposite side (wrap period `side + 2 r`), so its direction holds for the whole video.
- `second` (optional): a palette-coloured shape resting at one place; it either enters from an edge or
  leaves through one, over `TRAVEL_TIME` seconds.
- `distractor*`: small static gray shapes, so that no single pixel or colour gives an answer away.
"""

from __future__ import annotations

import math

import numpy as np

# Clearly distinct, saturated colours; backgrounds are dark and unsaturated, distractors gray.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "purple": (170, 50, 230),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = {"small": 0.11, "large": 0.2}  # radius as a fraction of the shorter frame side
SPEEDS = {"slowly": 0.2, "quickly": 0.6}  # shorter frame sides per second
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SECOND_KINDS = ("none", "enter", "leave")
TRAVEL_TIME = 0.5  # seconds an entering / leaving object takes to cross the frame edge
EDGES = ("left", "right", "top", "bottom")

# Per-size presets: frame sizes (width, height; even, incl. portrait and non-4:3), fps and durations.
SIZE_PRESETS: dict[str, dict] = {
    "tiny": {
        "resolutions": [(64, 48), (48, 64), (64, 36), (56, 56)],
        "fps": [15, 20],
        "duration": (3.0, 4.0),
        "log_uniform": False,
    },
    "default": {
        "resolutions": [(128, 96), (96, 128), (160, 90), (90, 160), (112, 112), (144, 108), (120, 68)],
        "fps": [15, 20, 24, 25, 30],
        "duration": (3.0, 30.0),
        "log_uniform": True,  # more short than long videos keeps generation within its time budget
    },
}


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _background(rng: np.random.Generator) -> dict:
    """Dark low-saturation gradient plus a smooth 4x4 noise grid (stored so rendering is reproducible)."""
    corners = [[int(v) for v in rng.integers(15, 95, 3)] for _ in range(2)]
    angle = float(rng.uniform(0, 2 * math.pi))
    noise = rng.integers(-14, 15, (4, 4, 3)).tolist()
    return {"corner_colors": corners, "gradient_angle": round(angle, 4), "noise_grid": noise}


def _rest_position(rng, width, height, radius, avoid_axis, avoid_value, avoid_gap):
    """A position fully inside the frame, off the main object's lane when the frame allows it."""
    for _ in range(50):
        x = float(rng.uniform(radius, width - radius))
        y = float(rng.uniform(radius, height - radius))
        coord = y if avoid_axis == "y" else x
        if abs(coord - avoid_value) > avoid_gap:
            return [round(x, 2), round(y, 2)]
    return [round(x, 2), round(y, 2)]


def _event_times(rng: np.random.Generator, duration: float, count: int) -> list[float]:
    """Event times away from the middle, so "early" / "late" answers are unambiguous."""
    if count == 1:
        lo, hi = (0.15, 0.4) if rng.random() < 0.5 else (0.6, 0.85)
        return [round(float(rng.uniform(lo, hi)) * duration, 3)]
    if count == 2:
        return [
            round(float(rng.uniform(0.15, 0.4)) * duration, 3),
            round(float(rng.uniform(0.6, 0.85)) * duration, 3),
        ]
    return []


def sample_attributes(rng: np.random.Generator) -> dict:
    """The captioned attributes of a video: drawn first so the generator can keep test captions unique."""
    main_color = _choice(rng, list(PALETTE))
    attrs = {
        "shape": _choice(rng, SHAPES),
        "color": main_color,
        "size": _choice(rng, list(SIZES)),
        "direction": _choice(rng, list(DIRECTIONS)),
        "speed": _choice(rng, list(SPEEDS)),
        "new_color": None,
        "second_kind": _choice(rng, SECOND_KINDS),
        "second_color": None,
        "second_shape": None,
        "first_event": None,
    }
    if rng.random() < 0.5:
        attrs["new_color"] = _choice(rng, [c for c in PALETTE if c != main_color])
    if attrs["second_kind"] != "none":
        attrs["second_color"] = _choice(rng, [c for c in PALETTE if c != main_color])
        attrs["second_shape"] = _choice(rng, [s for s in SHAPES if s != attrs["shape"]])
    if attrs["new_color"] and attrs["second_kind"] != "none":
        attrs["first_event"] = _choice(rng, ["color_change", attrs["second_kind"]])
    return attrs


def build_scene(rng: np.random.Generator, video_id: str, attrs: dict, size: str, codec: str) -> dict:
    """Sample geometry, timing and background for `attrs`; return the ground-truth dict."""
    preset = SIZE_PRESETS[size]
    width, height = _choice(rng, preset["resolutions"])
    fps = int(_choice(rng, preset["fps"]))
    lo, hi = preset["duration"]
    seconds = (
        math.exp(rng.uniform(math.log(lo), math.log(hi))) if preset["log_uniform"] else rng.uniform(lo, hi)
    )
    num_frames = max(int(round(seconds * fps)), int(math.ceil(lo * fps)))
    duration = num_frames / fps
    side = min(width, height)

    radius = SIZES[attrs["size"]] * side
    dx, dy = DIRECTIONS[attrs["direction"]]
    speed = SPEEDS[attrs["speed"]] * side
    start = [
        round(float(rng.uniform(radius, width - radius)), 2),
        round(float(rng.uniform(radius, height - radius)), 2),
    ]
    main = {
        "id": "main",
        "role": "main",
        "shape": attrs["shape"],
        "size": attrs["size"],
        "radius": round(radius, 3),
        "colors": [{"from": 0.0, "name": attrs["color"], "rgb": list(PALETTE[attrs["color"]])}],
        "motion": {
            "type": "wrap",
            "start": start,
            "velocity": [dx * speed, dy * speed],
            "direction": attrs["direction"],
            "speed": attrs["speed"],
        },
    }
    objects = [main]
    num_events = int(attrs["new_color"] is not None) + int(attrs["second_kind"] != "none")
    times = _event_times(rng, duration, num_events)
    if num_events == 2 and attrs["first_event"] != "color_change":
        times = times[::-1]  # times[0] belongs to the colour change
    events = []
    if attrs["new_color"] is not None:
        t = times.pop(0)
        main["colors"].append(
            {"from": t, "name": attrs["new_color"], "rgb": list(PALETTE[attrs["new_color"]])}
        )
        events.append(
            {
                "type": "color_change",
                "time": t,
                "object": "main",
                "from": attrs["color"],
                "to": attrs["new_color"],
            }
        )

    lane_axis = "y" if dx != 0 else "x"
    lane_value = start[1] if dx != 0 else start[0]
    if attrs["second_kind"] != "none":
        size2 = _choice(rng, list(SIZES))
        r2 = SIZES[size2] * side
        rest = _rest_position(rng, width, height, r2, lane_axis, lane_value, radius + r2)
        t = times.pop(0)
        kind = attrs["second_kind"]
        objects.append(
            {
                "id": "second",
                "role": "second",
                "shape": attrs["second_shape"],
                "size": size2,
                "radius": round(r2, 3),
                "colors": [
                    {"from": 0.0, "name": attrs["second_color"], "rgb": list(PALETTE[attrs["second_color"]])}
                ],
                "motion": {
                    "type": kind,
                    "rest": rest,
                    "edge": _choice(rng, EDGES),
                    "time": t,
                    "travel_time": TRAVEL_TIME,
                },
            }
        )
        events.append({"type": kind, "time": t, "end_time": round(t + TRAVEL_TIME, 3), "object": "second"})
    events.sort(key=lambda e: e["time"])

    for k in range(int(rng.integers(2, 6))):
        rd = float(rng.uniform(0.06, 0.09)) * side
        pos = [round(float(rng.uniform(rd, width - rd)), 2), round(float(rng.uniform(rd, height - rd)), 2)]
        gray = int(rng.integers(110, 170))
        objects.append(
            {
                "id": f"distractor{k}",
                "role": "distractor",
                "shape": _choice(rng, SHAPES),
                "radius": round(rd, 3),
                "colors": [{"from": 0.0, "name": "gray", "rgb": [gray, gray, gray]}],
                "motion": {"type": "static", "rest": pos},
            }
        )

    scene = {
        "video_id": video_id,
        "codec": codec,
        "width": width,
        "height": height,
        "fps": fps,
        "num_frames": num_frames,
        "duration": duration,
        "background": _background(rng),
        "objects": objects,
        "events": events,
        "attributes": attrs,
    }
    scene["trajectories"] = sample_trajectories(scene)
    return scene


def positions(obj: dict, scene: dict, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, y and presence of `obj` at times `t` [F] (seconds) -> three [F] arrays."""
    t = np.asarray(t, dtype=np.float64)
    motion = obj["motion"]
    r = obj["radius"]
    width, height = scene["width"], scene["height"]
    if motion["type"] == "wrap":
        (x0, y0), (vx, vy) = motion["start"], motion["velocity"]
        # Leaves fully (centre at -r) before reappearing on the far side (centre at side + r).
        x = np.mod(x0 + r + vx * t, width + 2 * r) - r
        y = np.mod(y0 + r + vy * t, height + 2 * r) - r
        return x, y, np.ones_like(t, dtype=bool)
    rx, ry = motion["rest"]
    x, y = np.full_like(t, rx), np.full_like(t, ry)
    if motion["type"] == "static":
        return x, y, np.ones_like(t, dtype=bool)
    ox, oy = _outside_point(motion["edge"], rx, ry, r, width, height)
    # Fraction of the way from the rest position to the outside point.
    frac = np.clip((t - motion["time"]) / motion["travel_time"], 0.0, 1.0)
    if motion["type"] == "enter":
        frac = 1.0 - frac
        present = t >= motion["time"]
    else:
        present = t < motion["time"] + motion["travel_time"]
    return rx + (ox - rx) * frac, ry + (oy - ry) * frac, present


def _outside_point(edge: str, rx: float, ry: float, r: float, width: int, height: int) -> tuple[float, float]:
    """Centre position just outside `edge`, where the object is fully out of the frame."""
    return {
        "left": (-r, ry),
        "right": (width + r, ry),
        "top": (rx, -r),
        "bottom": (rx, height + r),
    }[edge]


def color_at(obj: dict, t: float) -> str:
    """Palette name of `obj` at time `t`."""
    name = obj["colors"][0]["name"]
    for entry in obj["colors"]:
        if t >= entry["from"]:
            name = entry["name"]
    return name


def colors_rgb(obj: dict, t: np.ndarray) -> np.ndarray:
    """RGB of `obj` at times `t` [F] -> [F, 3] uint8."""
    t = np.asarray(t, dtype=np.float64)
    out = np.empty((len(t), 3), dtype=np.uint8)
    for entry in obj["colors"]:
        out[t >= entry["from"]] = entry["rgb"]
    return out


def fully_visible(obj: dict, scene: dict, t: np.ndarray) -> np.ndarray:
    """Whether the whole bounding disk of `obj` lies inside the frame at times `t` [F] -> [F] bool."""
    x, y, present = positions(obj, scene, t)
    r = obj["radius"]
    inside = (x >= r) & (x <= scene["width"] - r) & (y >= r) & (y <= scene["height"] - r)
    return present & inside


def sample_trajectories(scene: dict, step: float = 0.5) -> dict[str, list[list[float]]]:
    """Positions of the moving objects every `step` seconds: {id: [[t, x, y, present], ...]}."""
    times = np.arange(0.0, scene["duration"], step)
    out = {}
    for obj in scene["objects"]:
        if obj["motion"]["type"] == "static":
            continue
        x, y, present = positions(obj, scene, times)
        out[obj["id"]] = [
            [round(float(t), 3), round(float(a), 2), round(float(b), 2), int(p)]
            for t, a, b, p in zip(times, x, y, present)
        ]
    return out


def object_by_id(scene: dict, object_id: str) -> dict:
    for obj in scene["objects"]:
        if obj["id"] == object_id:
            return obj
    raise KeyError(f"scene {scene['video_id']}: no object with id {object_id!r}")
