"""A procedural face world whose perfect face swap is known: identity, attributes and context are separate
parameter sets, so `swap_truth` draws the source's identity with the target's attributes and context.

Faces are drawn as signed-distance shapes in a per-face "head frame" and anti-aliased analytically
(coverage = clamp(0.5 - d / pixel, 0, 1)), so one vectorised pass over the pixel grid renders a whole
batch with labels in the BiSeNet 19-class scheme, the 5 ArcFace landmarks and the gaze.

Head frame: units of image width at scale 1, origin at the face centre, v pointing down. At the neutral
pose (no yaw/roll/offset, scale 1) an average face puts its eyes, nose tip and mouth corners on the
ArcFace 112² template, so rendered images are aligned crops like the ones the experts expect.

Identity controls only the face: its outline, skin and inner features. Hair, neck, hat and background are
context and are placed from the pose alone, so pixels outside `identity_region` never depend on identity.
Sides: "left" means the left of the image (l_eye = 4 is the eye on the image's left).
"""
from __future__ import annotations

import contextlib
import math
from typing import Mapping

import torch

Params = dict[str, torch.Tensor]

# name -> (low, high) of the uniform prior. Identity: fixed per person.
IDENTITY_RANGES: Mapping[str, tuple[float, float]] = {
    "face_width": (0.26, 0.33),      # horizontal radius of the face outline
    "jaw_length": (0.31, 0.39),      # chin distance below the face centre
    "jaw_taper": (0.0, 0.35),        # how much the lower face narrows (round -> pointed chin)
    "skin_lightness": (0.35, 0.95),
    "skin_warmth": (0.0, 1.0),
    "eye_size": (0.042, 0.062),      # horizontal radius of an eye
    "eye_aspect": (0.38, 0.62),      # eye height / width
    "eye_spacing": (0.14, 0.175),    # half distance between eye centres
    "eye_height": (-0.16, -0.12),    # eye centre v
    "iris_hue": (0.0, 1.0),
    "brow_thickness": (0.008, 0.02),
    "brow_arch": (-0.005, 0.025),
    "nose_length": (0.12, 0.19),
    "nose_width": (0.03, 0.055),
    "mouth_width": (0.5, 0.72),      # half width as a fraction of the face's half width at mouth height
    "lip_thickness": (0.010, 0.024),
}
# Attributes: what a swap must keep from the target (pose, expression, gaze, lighting).
ATTRIBUTE_RANGES: Mapping[str, tuple[float, float]] = {
    "yaw": (-0.45, 0.45),            # head yaw, radians
    "roll": (-0.25, 0.25),           # in-plane rotation, radians
    "scale": (0.78, 1.0),
    "offset_x": (-0.04, 0.04),
    "offset_y": (-0.04, 0.04),
    "mouth_open": (0.0, 1.0),
    "smile": (-0.4, 1.0),
    "brow_raise": (0.0, 1.0),
    "gaze_pitch": (-0.4, 0.4),       # eye-in-head rotation, radians (positive = up)
    "gaze_yaw": (-0.5, 0.5),         # positive = towards the image's right
    "light_x": (-0.8, 0.8),
    "light_y": (-0.8, 0.3),
    "light_intensity": (0.75, 1.15),
}
# Context: what a swap must keep from the target's surroundings.
CONTEXT_RANGES: Mapping[str, tuple[float, float]] = {
    "hair_width": (0.36, 0.44),
    "hair_top": (0.42, 0.55),
    "hair_length": (-0.05, 0.45),    # how far below the face centre the back hair reaches
    "fringe": (0.0, 1.0),            # how far the fringe comes down over the forehead
    "hair_hue": (0.02, 0.14),
    "hair_lightness": (0.08, 0.85),
    "bg_hue": (0.0, 1.0),
    "bg_saturation": (0.1, 0.6),
    "bg_value": (0.3, 0.95),
    "bg_freq_x": (4.0, 30.0),
    "bg_freq_y": (4.0, 30.0),
    "bg_phase": (0.0, 2 * math.pi),
    "bg_contrast": (0.0, 0.25),
    "neck_width": (0.13, 0.18),
    "neck_lightness": IDENTITY_RANGES["skin_lightness"],  # the neck belongs to the target, not the
    "neck_warmth": IDENTITY_RANGES["skin_warmth"],        # identity: see `match_neck`
    "hat": (0.0, 1.0),               # a hat (occluder, class 18) is drawn where hat > HAT_THRESHOLD
    "hat_hue": (0.0, 1.0),
}
HAT_THRESHOLD = 0.8  # 20 % of contexts wear a hat

# ArcFace 112² template (SPEC §5) in image units: eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
) / 112.0
FACE_CENTER = (0.5, 0.6)   # image position of the head-frame origin at the neutral pose
NOSE_PROTRUSION = 0.09
MOUTH_V = 0.2245           # mouth line v at the neutral expression (template mouth height)
NOSE_TIP_V = 0.0405        # template nose height

# Labels (BiSeNet / CelebAMask-HQ scheme, SPEC §5).
BACKGROUND, SKIN, L_BROW, R_BROW, L_EYE, R_EYE = 0, 1, 2, 3, 4, 5
NOSE, MOUTH, U_LIP, L_LIP, NECK, HAIR, HAT = 10, 11, 12, 13, 14, 17, 18


def _sample(ranges: Mapping[str, tuple[float, float]], n: int, seed: int) -> Params:
    generator = torch.Generator().manual_seed(int(seed))
    uniform = torch.rand(n, len(ranges), generator=generator, dtype=torch.float64)
    return {
        name: (low + (high - low) * uniform[:, i]).float() for i, (name, (low, high)) in enumerate(ranges.items())
    }


def sample_identities(n: int, seed: int) -> Params:
    """n identities, each a dict entry of shape [n]; the same seed gives the same people."""
    return _sample(IDENTITY_RANGES, n, seed)


def sample_attributes(n: int, seed: int) -> Params:
    return _sample(ATTRIBUTE_RANGES, n, seed)


def sample_contexts(n: int, seed: int) -> Params:
    return _sample(CONTEXT_RANGES, n, seed)


def match_neck(contexts: Params, identities: Params) -> Params:
    """Contexts whose neck has the skin tone of these identities: how a person is drawn. A swap keeps
    the target's neck, so the truth of a swap has the source's face on the target's neck."""
    return {**contexts, "neck_lightness": identities["skin_lightness"], "neck_warmth": identities["skin_warmth"]}


# The identity parameters that are colours; the rest are shape (outline and inner features).
COLOUR_PARAMS = ("skin_lightness", "skin_warmth", "iris_hue")


def recoloured(shape: Params, colours: Params) -> Params:
    """shape's identities with colours' skin and iris: a swap that transfers colour and nothing else, the
    yardstick for a swap whose identity embedder sees tone better than face shape."""
    return {name: colours[name] if name in COLOUR_PARAMS else value for name, value in shape.items()}


def neutral_attributes(n: int = 1) -> Params:
    """Frontal, scale 1, neutral expression, centred gaze: the pose the ArcFace template describes."""
    values = {name: 0.0 for name in ATTRIBUTE_RANGES}
    values.update(scale=1.0, light_y=-0.3, light_intensity=1.0)
    return {name: torch.full((n,), value) for name, value in values.items()}


def index(params: Params, rows: torch.Tensor | list[int] | slice | int) -> Params:
    """Select rows of every entry (an int keeps a batch dimension of 1)."""
    if isinstance(rows, int):
        rows = [rows]
    return {name: value[rows] for name, value in params.items()}


def concat(parts: list[Params]) -> Params:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _hsv(h: torch.Tensor, s: torch.Tensor | float, v: torch.Tensor | float) -> torch.Tensor:
    """[n] HSV in [0,1] -> [n, 3] RGB."""
    s, v = torch.as_tensor(s).expand_as(h), torch.as_tensor(v).expand_as(h)
    k = torch.stack([torch.full_like(h, 5.0), torch.full_like(h, 3.0), torch.full_like(h, 1.0)], dim=1)
    k = torch.remainder(k + h[:, None] * 6.0, 6.0)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _skin_rgb(lightness: torch.Tensor, warmth: torch.Tensor) -> torch.Tensor:
    return _hsv(0.03 + 0.04 * warmth, 0.25 + 0.3 * (1 - lightness) * 0.8 + 0.1 * warmth, 0.35 + 0.6 * lightness)


def _turn(x0: torch.Tensor, yaw: torch.Tensor, radius: torch.Tensor, protrusion: float = 0.0) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Where a feature at frontal u = x0 on a head cylinder of the face's radius lands after yaw, and its
    horizontal squeeze (features turning away get narrower, and the face outline clips them)."""
    angle = torch.asin(torch.clamp(x0 / radius, -0.95, 0.95))
    depth = radius * torch.cos(angle) + protrusion
    u = radius * torch.sin(angle) * torch.cos(yaw) + depth * torch.sin(yaw)
    squeeze = torch.clamp(torch.cos(angle + yaw) / torch.cos(angle), 0.25, 1.2)
    return u, squeeze


def _layout(identity: Params, attributes: Params) -> dict[str, torch.Tensor]:
    """Per-face geometry in the head frame ([n] tensors): where every feature goes after pose/expression."""
    yaw, radius = attributes["yaw"], identity["face_width"]
    g: dict[str, torch.Tensor] = {}
    spacing = identity["eye_spacing"]
    eye_radius = _half_width(identity, identity["eye_height"])
    for side, sign in (("l", -1.0), ("r", 1.0)):
        u, squeeze = _turn(sign * spacing, yaw, eye_radius)
        g[f"eye_{side}_u"], g[f"eye_{side}_squeeze"] = u, squeeze
        brow_u, brow_squeeze = _turn(sign * (spacing + 0.01), yaw, eye_radius)
        g[f"brow_{side}_u"], g[f"brow_{side}_squeeze"] = brow_u, brow_squeeze
    g["eye_v"] = identity["eye_height"] - 0.008 * attributes["brow_raise"]
    g["eye_rx"] = identity["eye_size"]
    g["eye_ry"] = identity["eye_size"] * identity["eye_aspect"]
    g["brow_v"] = identity["eye_height"] - g["eye_ry"] - 0.035 - 0.03 * attributes["brow_raise"]
    g["brow_half"] = 0.06 + 0.3 * (identity["eye_size"] - 0.042)
    g["nose_tip_v"] = NOSE_TIP_V + 0.4 * (identity["nose_length"] - 0.155)
    g["nose_top_v"] = g["nose_tip_v"] - identity["nose_length"]
    g["nose_top_u"], _ = _turn(torch.zeros_like(yaw), yaw, radius, 0.25 * NOSE_PROTRUSION)
    g["nose_tip_u"], _ = _turn(torch.zeros_like(yaw), yaw, radius, NOSE_PROTRUSION)
    g["mouth_v"] = MOUTH_V + 0.3 * (identity["jaw_length"] - 0.35)
    cheek = _half_width(identity, g["mouth_v"])
    mouth_left, _ = _turn(-identity["mouth_width"] * cheek, yaw, cheek, 0.01)
    mouth_right, _ = _turn(identity["mouth_width"] * cheek, yaw, cheek, 0.01)
    g["mouth_u"] = 0.5 * (mouth_left + mouth_right)
    g["mouth_half"] = 0.5 * (mouth_right - mouth_left)
    g["mouth_open"] = 0.045 * attributes["mouth_open"]
    g["smile"] = 0.03 * attributes["smile"]
    g["face_u"] = 0.04 * torch.sin(yaw)
    return g


def _half_width(identity: Params, v: torch.Tensor) -> torch.Tensor:
    """Half width of the face outline at height v ([n]); the same shape as `_face_outline`."""
    lower = v > 0
    rv = torch.where(lower, identity["jaw_length"], 0.42)
    q = torch.clamp(v / rv, -1.0, 1.0) ** 2
    ru = identity["face_width"] * torch.where(lower, 1.0 - identity["jaw_taper"] * q, 1.0)
    return ru * torch.sqrt(1.0 - q)


def _landmarks_head(g: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n, 5, 2] ArcFace points in the head frame: eye centres, nose tip, mouth corners."""
    corner_v = g["mouth_v"] - g["smile"]
    points = [
        (g["eye_l_u"], g["eye_v"]),
        (g["eye_r_u"], g["eye_v"]),
        (g["nose_tip_u"], g["nose_tip_v"]),
        (g["mouth_u"] - g["mouth_half"], corner_v),
        (g["mouth_u"] + g["mouth_half"], corner_v),
    ]
    return torch.stack([torch.stack(p, dim=-1) for p in points], dim=1)


def _pose(attributes: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre (cx, cy), cos/sin of roll and scale of the head frame in image units."""
    cx = FACE_CENTER[0] + attributes["offset_x"]
    cy = FACE_CENTER[1] + attributes["offset_y"]
    return cx, cy, torch.cos(attributes["roll"]), torch.sin(attributes["roll"]), attributes["scale"]


def head_to_image(points: torch.Tensor, attributes: Params, size: int) -> torch.Tensor:
    """[n, k, 2] head-frame points -> pixel coordinates (x, y) with pixel centres at i + 0.5."""
    cx, cy, cos, sin, scale = (t[:, None] for t in _pose(attributes))
    u, v = points[..., 0], points[..., 1]
    x = cx + scale * (u * cos - v * sin)
    y = cy + scale * (u * sin + v * cos)
    return torch.stack([x, y], dim=-1) * size


def _ellipse(u: torch.Tensor, v: torch.Tensor, cu, cv, ru, rv) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate signed distance to an axis-aligned ellipse (exact on the axes), and the normalised coords."""
    p = (u - cu) / ru
    q = (v - cv) / rv
    return (torch.sqrt(p * p + q * q) - 1.0) * torch.minimum(ru, rv), p, q


class _Canvas:
    """Back-to-front compositing of colour and labels over a pixel grid with head-frame coordinates u, v.

    A pixel takes a layer's label where the layer covers more than half of it. Colour planes are kept
    separate ([n,H,W] each): per-plane in-place lerps are ~3x faster than one broadcast lerp over
    [n,3,H,W]. Small features are drawn in `window`s around them, which is what makes rendering fast."""

    def __init__(self, planes: list[torch.Tensor], labels: torch.Tensor, frame: "_Frame", cols, rows):
        self.planes, self.labels, self.frame = planes, labels, frame
        self.u, self.v = frame.uv(cols, rows)
        self.pixel = frame.pixel
        self.clip: torch.Tensor | None = None  # coverage every layer is limited to (see `window`)

    def cover(self, d: torch.Tensor) -> torch.Tensor:
        """Anti-aliased coverage of a signed distance (negative inside): a one-pixel ramp."""
        return torch.clamp(0.5 - d / self.pixel, 0.0, 1.0)

    def paint(self, coverage: torch.Tensor, rgb: torch.Tensor, label: int | None, tone: torch.Tensor | None = None) -> None:
        """Cover with colour rgb [n,3] (times the per-pixel tone if given)."""
        if self.clip is not None:
            coverage = torch.minimum(coverage, self.clip)
        for channel, plane in enumerate(self.planes):
            color = _c(rgb[:, channel])
            plane.lerp_(color * tone if tone is not None else color.expand_as(plane), coverage)
        if label is not None:
            self.labels.masked_fill_(coverage > 0.5, label)

    def shade(self, coverage: torch.Tensor, amount: float, label: int | None = None) -> None:
        """Darken by `amount` where covered, keeping the lighting underneath (nose, lids, pupils)."""
        if self.clip is not None:
            coverage = torch.minimum(coverage, self.clip)
        factor = 1.0 - amount * coverage
        for plane in self.planes:
            plane.mul_(factor)
        if label is not None:
            self.labels.masked_fill_(coverage > 0.5, label)

    @contextlib.contextmanager
    def window(self, centre_u: torch.Tensor, centre_v: torch.Tensor, radius: float, clip: torch.Tensor | None = None):
        """A sub-canvas of the square of pixels holding the head-frame disc (centre, radius) of every
        face; written back on exit. The drawing inside is the same as on the full canvas. `clip`: a
        coverage [n,H,W] of this canvas that bounds everything painted in the window."""
        frame, size = self.frame, self.frame.size
        half = math.ceil(radius * size * float(frame.scale.max())) + 2
        span = min(2 * half, size)
        centre = head_to_image(torch.stack([centre_u, centre_v], -1)[:, None], frame.attributes, size)[:, 0]
        start = torch.clamp(torch.floor(centre) - half, 0, size - span).long()
        offsets = torch.arange(span)
        cols = (start[:, 0, None] + offsets)[:, None, :]
        rows = (start[:, 1, None] + offsets)[:, :, None]
        batch = torch.arange(len(start))[:, None, None]
        planes = [plane[batch, rows, cols] for plane in self.planes]
        sub = _Canvas(planes, self.labels[batch, rows, cols], frame, cols.float(), rows.float())
        if clip is not None:
            sub.clip = clip[batch, rows, cols]
        yield sub
        for plane, patch in zip(self.planes, sub.planes):
            plane[batch, rows, cols] = patch
        self.labels[batch, rows, cols] = sub.labels

    def image(self) -> torch.Tensor:
        return torch.stack(self.planes, dim=1).clamp_(0.0, 1.0)


class _Frame:
    """Pixel <-> head-frame mapping of a batch (pose from the attributes)."""

    def __init__(self, attributes: Params, size: int):
        cx, cy, cos, sin, scale = _pose(attributes)
        self.attributes, self.size = attributes, size
        self.cx, self.cy, self.cos, self.sin = _c(cx), _c(cy), _c(cos), _c(sin)
        self.scale, self.inv_scale = _c(scale), _c(1.0 / scale)
        self.pixel = _c(1.0 / (size * scale))

    def uv(self, cols: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-frame coordinates of pixel centres; cols [., 1, W], rows [., H, 1] (pixel indices)."""
        x = (cols + 0.5) / self.size - self.cx
        y = (rows + 0.5) / self.size - self.cy
        cos, sin = self.cos * self.inv_scale, self.sin * self.inv_scale
        return x * cos + y * sin, y * cos - x * sin


def _c(x: torch.Tensor) -> torch.Tensor:
    """[n] -> [n, 1, 1] for broadcasting over the pixel grid."""
    return x[:, None, None]


# Head-frame radii of the windows the small features are drawn in (they contain the feature at any
# parameter value of the priors, with margin; see `_layout`).
EYE_WINDOW, NOSE_WINDOW, MOUTH_WINDOW = 0.145, 0.125, 0.22


@contextlib.contextmanager
def _one_thread():
    """Rendering is many small elementwise ops: intra-op threads barely help them, and on a shared
    2-core machine they made a 64-face batch 15x slower (0.15 s -> 2.5 s) by waiting on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render_batch(identities: Params, attributes: Params, contexts: Params, size: int = 128) -> dict[str, torch.Tensor]:
    """Draw n faces. Returns image [n,3,H,W] float in [0,1], labels [n,H,W] long (BiSeNet classes),
    landmarks5 [n,5,2] pixel (x, y), gaze [n,2] (pitch, yaw) radians, face_mask [n,H,W] bool (classes a
    swap must change: skin, brows, eyes, nose, mouth, lips)."""
    with torch.no_grad(), _one_thread():
        return _render(identities, attributes, contexts, size)


def _render(identities: Params, attributes: Params, contexts: Params, size: int) -> dict[str, torch.Tensor]:
    n = next(iter(attributes.values())).shape[0]
    g = _layout(identities, attributes)
    frame = _Frame(attributes, size)
    pixels = torch.arange(size, dtype=torch.float32)
    canvas = _Canvas(
        _background(contexts, (pixels + 0.5) / size), torch.zeros(n, size, size, dtype=torch.long),
        frame, pixels[None, None, :], pixels[None, :, None],
    )
    u, v = canvas.u, canvas.v
    light = attributes["light_intensity"][:, None]
    hair_rgb = _hsv(contexts["hair_hue"], 0.55 - 0.2 * contexts["hair_lightness"], contexts["hair_lightness"]) * light

    # Back hair: an ellipse around the head and, for long hair, a band down to hair_length.
    hair_w, hair_top = _c(contexts["hair_width"]), _c(contexts["hair_top"])
    hair_cv = -hair_top + hair_w * 1.1
    d_hair = _ellipse(u, v, 0.0, hair_cv, hair_w, hair_w * 1.1)[0]
    d_long = torch.maximum(u.abs() - hair_w * 0.97, torch.maximum(v - _c(contexts["hair_length"]), hair_cv - v))
    strands = 1.0 + 0.08 * torch.sin(u * 160.0 + 60.0 * v * v)  # curved strands, one sin per pixel
    canvas.paint(canvas.cover(torch.minimum(d_hair, d_long)), hair_rgb, HAIR, strands)

    # Neck (context: its width does not depend on identity).
    skin = _skin_rgb(identities["skin_lightness"], identities["skin_warmth"]) * light
    neck = _skin_rgb(contexts["neck_lightness"], contexts["neck_warmth"]) * light
    d_neck = torch.maximum(u.abs() - _c(contexts["neck_width"]), 0.15 - v)
    canvas.paint(canvas.cover(d_neck), neck * 0.75, NECK)

    # Face: ellipse whose lower half is longer (jaw) and narrows (taper), lit by a fake sphere normal.
    face_u = _c(g["face_u"])
    d_face, p, q = _face_outline(u, v, face_u, identities["face_width"], identities["jaw_length"],
                                 identities["jaw_taper"])
    nz = torch.sqrt(torch.clamp(1.0 - p * p - q * q, 0.04, 1.0))
    lambert = (p * _c(attributes["light_x"]) + q * _c(attributes["light_y"]) + nz * 0.8).clamp_min(0.0)
    face = canvas.cover(d_face)
    canvas.paint(face, skin, SKIN, 0.55 + 0.5 * lambert)

    # Inner features, each in a window and clipped to the face outline: an identity draws only inside
    # its own face, which is what makes `identity_region` exact.
    nose_mid = 0.5 * (g["nose_top_u"] + g["nose_tip_u"])
    with canvas.window(nose_mid, torch.full_like(nose_mid, -0.04), NOSE_WINDOW, face) as window:
        _nose(window, g)
    with canvas.window(g["mouth_u"], torch.full_like(nose_mid, 0.215), MOUTH_WINDOW, face) as window:
        _mouth(window, g, identities, light)
    iris_rgb = _hsv(identities["iris_hue"], 0.6, 0.55) * light
    for side, sign, eye_label, brow_label in (("l", -1.0, L_EYE, L_BROW), ("r", 1.0, R_EYE, R_BROW)):
        with canvas.window(g[f"eye_{side}_u"], g["eye_v"] - 0.06, EYE_WINDOW, face) as window:
            _eye(window, g, side, attributes, iris_rgb, eye_label)
            _brow(window, g, side, sign, identities, hair_rgb * 0.55, brow_label)

    # Fringe over the forehead, then an optional hat: context drawn in front of the face.
    fringe_v = -0.31 + 0.08 * _c(contexts["fringe"]) + 0.012 * torch.sin(u * 70.0)
    canvas.paint(canvas.cover(torch.maximum(d_hair - 0.01, v - fringe_v)), hair_rgb, HAIR, strands)
    hat_on = _c((contexts["hat"] > HAT_THRESHOLD).float())
    hat_rgb = _hsv(contexts["hat_hue"], 0.6, 0.6) * light
    canvas.paint(canvas.cover(torch.maximum(d_hair - 0.02, v + 0.33)) * hat_on, hat_rgb, HAT)

    labels = canvas.labels
    return {
        "image": canvas.image(),
        "labels": labels,
        "landmarks5": head_to_image(_landmarks_head(g), attributes, size),
        "gaze": torch.stack([attributes["gaze_pitch"], attributes["gaze_yaw"]], dim=1),
        "face_mask": face_mask(labels),
    }


def _face_outline(u, v, face_u, width, jaw_length, jaw_taper) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lower = v > 0
    ru = _c(width) * torch.where(lower, 1.0 - _c(jaw_taper) * torch.clamp(v / _c(jaw_length), 0.0, 1.0) ** 2, 1.0)
    rv = torch.where(lower, _c(jaw_length), 0.42)
    return _ellipse(u, v, face_u, 0.0, ru, rv)


def _background(contexts: Params, coords: torch.Tensor) -> list[torch.Tensor]:
    """Separable plaid texture in image coordinates: it does not move with the head, and costs ~nothing."""
    base = _hsv(contexts["bg_hue"], contexts["bg_saturation"], contexts["bg_value"])
    phase = contexts["bg_phase"][:, None]
    wave_x = torch.sin(contexts["bg_freq_x"][:, None] * coords[None] + phase)
    wave_y = torch.sin(contexts["bg_freq_y"][:, None] * coords[None] * 1.3 - phase)
    texture = 1.0 + contexts["bg_contrast"][:, None, None] * (wave_y[:, :, None] * wave_x[:, None, :])
    gradient = 1.0 - 0.15 * coords[None, :, None]
    shade = texture * gradient
    return [_c(base[:, channel]) * shade for channel in range(3)]


def _nose(canvas: _Canvas, g) -> None:
    u, v = canvas.u, canvas.v
    top_v, tip_v = _c(g["nose_top_v"]), _c(g["nose_tip_v"])
    t = torch.clamp((v - top_v) / (tip_v - top_v), 0.0, 1.0)
    off = (u - _c(g["nose_top_u"]) - t * _c(g["nose_tip_u"] - g["nose_top_u"])).abs()
    half = 0.012 + t * t * 0.03
    d = torch.maximum(torch.maximum(off - half, top_v - v), v - tip_v - 0.008)
    canvas.shade(canvas.cover(d), 0.13, NOSE)
    d_nostrils = torch.maximum(torch.maximum(off - half * 0.75, (v - tip_v + 0.004).abs() - 0.006), 0.01 - off)
    canvas.shade(canvas.cover(d_nostrils), 0.35)


def _mouth(canvas: _Canvas, g, identities, light) -> None:
    """Lips around a mouth line that curves up with smile; the mouth opens between them."""
    half = _c(g["mouth_half"])
    t = (canvas.u - _c(g["mouth_u"])) / half
    span = torch.clamp(1.0 - t * t, min=-1.0)
    s = canvas.v - (_c(g["mouth_v"]) - _c(g["smile"]) * t * t)
    opening = _c(g["mouth_open"]) * span
    lip = _c(identities["lip_thickness"]) * span
    upper = s < 0
    ends = (t.abs() - 1.0) * half
    d_lips = torch.maximum(s.abs() - opening - torch.where(upper, lip * 0.8, lip), ends)
    lip_rgb = _skin_rgb(identities["skin_lightness"], identities["skin_warmth"]) * torch.tensor([0.95, 0.62, 0.62]) * light
    coverage = canvas.cover(d_lips)
    canvas.paint(coverage * upper, lip_rgb * 0.92, U_LIP)
    canvas.paint(coverage * ~upper, lip_rgb, L_LIP)
    inner = canvas.cover(torch.maximum(s.abs() - opening, ends + 0.05 * half))
    canvas.paint(inner, torch.tensor([[0.35, 0.08, 0.1]]) * light, MOUTH)


def _eye(canvas: _Canvas, g, side: str, attributes, iris_rgb, label: int) -> None:
    """Eye white (labelled eye), iris and pupil shifted by the gaze, and a dark upper lid line."""
    u, v = canvas.u, canvas.v
    squeeze = _c(g[f"eye_{side}_squeeze"])
    eu, ev = _c(g[f"eye_{side}_u"]), _c(g["eye_v"])
    rx, ry = _c(g["eye_rx"]) * squeeze, _c(g["eye_ry"])
    d_eye = _ellipse(u, v, eu, ev, rx, ry)[0]
    eye = canvas.cover(d_eye)
    canvas.paint(eye, torch.tensor([[0.93, 0.92, 0.88]]) * attributes["light_intensity"][:, None], label)
    iris_r = ry * 0.85
    iu = eu + _c(torch.sin(attributes["gaze_yaw"])) * rx * 0.55
    iv = ev - _c(torch.sin(attributes["gaze_pitch"])) * ry * 0.55
    canvas.paint(torch.minimum(canvas.cover(_ellipse(u, v, iu, iv, iris_r * squeeze, iris_r)[0]), eye), iris_rgb, None)
    pupil = canvas.cover(_ellipse(u, v, iu, iv, iris_r * squeeze * 0.45, iris_r * 0.45)[0])
    canvas.shade(torch.minimum(pupil, eye), 0.9)
    rim = torch.clamp(1.0 - (d_eye / (canvas.pixel * 1.2)).abs(), 0.0, 1.0) * (v < ev)
    canvas.shade(rim, 0.6)


def _brow(canvas: _Canvas, g, side: str, sign: float, identities, color, label: int) -> None:
    half = _c(g["brow_half"] * g[f"brow_{side}_squeeze"])
    t = (canvas.u - _c(g[f"brow_{side}_u"])) / half
    centre = _c(g["brow_v"]) - _c(identities["brow_arch"]) * (1.0 - t * t) + sign * 0.012 * t
    thickness = _c(identities["brow_thickness"]) * (1.0 - 0.4 * (t * sign).clamp(0.0, 1.0))
    d = torch.maximum((canvas.v - centre).abs() - thickness, (t.abs() - 1.0) * half)
    canvas.paint(canvas.cover(d), color, label)


FACE_CLASSES = (SKIN, L_BROW, R_BROW, L_EYE, R_EYE, NOSE, MOUTH, U_LIP, L_LIP)


_IS_FACE = torch.zeros(256, dtype=torch.bool)
_IS_FACE[list(FACE_CLASSES)] = True


def face_mask(labels: torch.Tensor) -> torch.Tensor:
    """Pixels of the classes a swap changes (DiffFace's kept classes); one table lookup per pixel."""
    return _IS_FACE.to(labels.device)[labels]


def identity_region(attributes: Params, contexts: Params, size: int, margin_px: float = 1.5) -> torch.Tensor:
    """[n,H,W] bool: every pixel some identity could draw on under these attributes (the largest face
    outline the identity prior allows, plus an anti-aliasing margin). Outside it, images are identical
    for every identity: the honest region where a swap may differ from its target."""
    frame = _Frame(attributes, size)
    pixels = torch.arange(size, dtype=torch.float32)
    u, v = frame.uv(pixels[None, None, :], pixels[None, :, None])
    face_u = _c(0.04 * torch.sin(attributes["yaw"]))
    widest = torch.full_like(face_u[:, 0, 0], IDENTITY_RANGES["face_width"][1])
    longest = torch.full_like(widest, IDENTITY_RANGES["jaw_length"][1])
    d = _face_outline(u, v, face_u, widest, longest, torch.zeros_like(widest))[0]
    return d < margin_px * frame.pixel


def render(identity: Params, attributes: Params, context: Params, size: int = 128) -> dict[str, torch.Tensor]:
    """Alias of render_batch for readers who think of one face (pass batches of 1)."""
    return render_batch(identity, attributes, context, size)


def swap_truth(source_identity: Params, target_attributes: Params, target_context: Params, size: int = 128) -> dict[
    str, torch.Tensor
]:
    """The perfect swap: the source's identity with the target's pose, expression, gaze, lighting and context."""
    return render_batch(source_identity, target_attributes, target_context, size)
