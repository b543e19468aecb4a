"""`--preset official` is hxngiee/DiffFace's sampler, step for step.

The original's guided step (gaussian_diffusion.p_sample / ddim_sample with image_editor.cond_fn and
postprocess_fn, batch 1, one view) is written out here in its own order of operations, with its own
constants (256² images, the parser at 512², ArcFace at 112², eye boxes ±5/±9 px) and its own respacing
tables, and compared with `guided_step` on the same tiny networks, x_t and noise.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms

from facekit.experts.arcface import IRSEArcFace
from facekit.experts.bisenet import BiSeNet
from facekit.experts.eyenet import EyeNet
from facekit.experts.frozen import freeze
from teacher.experts import Experts
from teacher.guidance import identity_views
from teacher.sampling import guided_step, load_swap_config, prepare_guide
from teacher.unet import UNetConfig

from teacher_tiny import tiny_unet

SIZE, STEPS, SKIP, THRESHOLD = 256, 100, 25, 30
IDS = [1, 2, 3, 4, 5, 10, 11, 12, 13]
IMAGENET = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def spaced_tables(respacing: int = STEPS) -> dict:
    """guided-diffusion's linear schedule, space_timesteps("100") and SpacedDiffusion's betas."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    frac_stride = (1000 - 1) / (respacing - 1)
    kept, cur = [], 0.0
    for _ in range(respacing):
        kept.append(round(cur))
        cur += frac_stride
    base = np.cumprod(1.0 - betas)
    new_betas, last = [], 1.0
    for i, a in enumerate(base):
        if i in set(kept):
            new_betas.append(1 - a / last)
            last = a
    b = np.array(new_betas)
    ac = np.cumprod(1 - b)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = b * (1 - ac_prev) / (1 - ac)
    return {"kept": kept, "betas": b, "ac": ac, "ac_prev": ac_prev,
            "post_log_var": np.log(np.append(post_var[1], post_var[1:])),
            "coef1": b * np.sqrt(ac_prev) / (1 - ac), "coef2": (1 - ac_prev) * np.sqrt(1 - b) / (1 - ac)}


def at(values: np.ndarray, t: int) -> torch.Tensor:
    return torch.tensor(values[t], dtype=torch.float32)


def p_mean_variance(model, tab, x, t, img_id):
    """clip_denoised=False, LEARNED_RANGE, the model at timestep_map[t] (rescaled by 1000/1000)."""
    out = model(x, torch.tensor([float(tab["kept"][t])]), img_id)
    eps, v = out.split(3, dim=1)
    frac = (v + 1) / 2
    log_var = frac * at(np.log(tab["betas"]), t) + (1 - frac) * at(tab["post_log_var"], t)
    pred_xstart = at(np.sqrt(1 / tab["ac"]), t) * x - at(np.sqrt(1 / tab["ac"] - 1), t) * eps
    mean = at(tab["coef1"], t) * pred_xstart + at(tab["coef2"], t) * x
    return {"mean": mean, "variance": torch.exp(log_var), "log_variance": log_var, "pred_xstart": pred_xstart}


def seg(parser, image01):
    """Resize(512) → Normalize → SpecificNorm → BiSeNet (logits up to 512, align_corners) → Resize(256)."""
    x = transforms.Resize((512, 512), antialias=False)(image01)
    x = (IMAGENET(x) - 0.5) / 0.5
    logits = F.interpolate(parser.stride8_logits(x), (512, 512), mode="bilinear", align_corners=True)
    return transforms.Resize((SIZE, SIZE), antialias=False)(logits)


def eye_coords(points):
    x, y = 5, 9
    out = []
    for a, b in ((36, 39), (42, 45)):
        left, right = points[a], points[b]
        y_avg = (left[1] + right[1]) // 2
        out += [int(left[0]) - x, int(y_avg - y), int(right[0]) + x, int(y_avg + y)]
    return out


def gaze_net(eyenet, crop):
    return eyenet(transforms.Resize((96, 160), antialias=False)(crop))[1]


def cond_fn(model, tab, experts, x, t_scaled, img_id, src, targ, mask, points):
    """image_editor.cond_fn with aug_num = 1; returns −∇loss, as the original."""
    arcface, parser, eyenet = experts.embedder, experts.parser, experts.gaze
    x = x.detach().requires_grad_()
    t = int((torch.tensor([t_scaled]).float() * (STEPS / 1000)).long())  # unscale_timestep
    out = p_mean_variance(model, tab, x, t, img_id)
    fac = float(np.sqrt(1 - tab["ac"])[t])
    x_in = out["pred_xstart"] * fac + x * (1 - fac)
    arc_src = IMAGENET((x_in + 1) / 2)
    arc_targ = IMAGENET((src + 1) / 2)
    masked = F.interpolate(arc_src * mask, (112, 112))
    reference = F.interpolate(arc_targ, (112, 112))
    src_id = F.normalize(arcface.features(masked)[0], p=2, dim=1)
    targ_id = F.normalize(arcface.features(reference)[0], p=2, dim=1)
    dists = 1 - (src_id * targ_id).sum(1) / (src_id.norm(dim=1) * targ_id.norm(dim=1))
    loss = dists[0::1].mean() * 6000
    src_seg, targ_seg = seg(parser, (x_in + 1) / 2)[0], seg(parser, (targ + 1) / 2)[0]
    seg_loss = torch.tensor(0).float()
    for i in IDS:
        seg_loss = seg_loss + F.l1_loss(src_seg[i], targ_seg[i])
    loss = loss + seg_loss * 200
    if 10 < t < 50:
        src_eye, targ_eye = x_in * 0.5 + 0.5, targ * 0.5 + 0.5
        llx, lly, lrx, lry, rlx, rly, rrx, rry = eye_coords(points)
        pairs = [(targ_eye[:, :, lly:lry, llx:lrx], src_eye[:, :, lly:lry, llx:lrx]),
                 (targ_eye[:, :, rly:rry, rlx:rrx], src_eye[:, :, rly:rry, rlx:rrx])]
        gaze = sum(F.l1_loss(gaze_net(eyenet, a.mean(1, keepdim=True)), gaze_net(eyenet, b.mean(1, keepdim=True)))
                   for a, b in pairs) * 200
        loss = loss + gaze.sum()
    loss = loss + F.mse_loss(x_in, targ) * 50
    return -torch.autograd.grad(loss, x)[0]


def original_ddpm_step(model, tab, experts, x, i, img_id, src, targ, mask, points, noise, bg_noise):
    with torch.no_grad():
        out = p_mean_variance(model, tab, x, i, img_id)
    gradient = cond_fn(model, tab, experts, x, float(tab["kept"][i]), img_id, src, targ, mask, points)
    mean = out["mean"].float() + out["variance"] * gradient.float()  # condition_mean
    sample = mean + float(i != 0) * torch.exp(0.5 * out["log_variance"]) * noise
    background = at(np.sqrt(tab["ac"]), i) * targ + at(np.sqrt(1 - tab["ac"]), i) * bg_noise  # q_sample(targ, t)
    softmask = mask * min(1, (75 - (i + 1)) / (75.0 - THRESHOLD))
    return sample * softmask + background * (1 - softmask), out["pred_xstart"]


def original_ddim_step(model, tab, experts, x, i, img_id, src, targ, mask, points):
    with torch.no_grad():
        out = p_mean_variance(model, tab, x, i, img_id)
    ac, ac_prev = at(tab["ac"], i), at(tab["ac_prev"], i)

    def eps_from_xstart(pred):
        return (at(np.sqrt(1 / tab["ac"]), i) * x - pred) / at(np.sqrt(1 / tab["ac"] - 1), i)

    eps = eps_from_xstart(out["pred_xstart"])  # condition_score
    eps = eps - (1 - ac).sqrt() * cond_fn(model, tab, experts, x, float(tab["kept"][i]), img_id, src, targ, mask, points)
    pred_xstart = at(np.sqrt(1 / tab["ac"]), i) * x - at(np.sqrt(1 / tab["ac"] - 1), i) * eps
    eps = eps_from_xstart(pred_xstart)
    return pred_xstart * ac_prev.sqrt() + (1 - ac_prev).sqrt() * eps, pred_xstart  # eta 0, no postprocess_fn


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = UNetConfig(image_size=SIZE, model_channels=32, channel_mult=(1, 1, 2, 2, 2), num_res_blocks=1,
                        attention_resolutions=(16,), num_head_channels=32)
    model = tiny_unet(0, config)
    experts = Experts(freeze(IRSEArcFace(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16), input_size=112)),
                      freeze(BiSeNet(width=0.0625, input_size=512)), freeze(EyeNet(nstack=1, nfeatures=8, nlandmarks=8)))
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    face = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 < 1).float()
    src = (torch.rand(1, 3, SIZE, SIZE, generator=g) * 0.4 + 0.3 * face - 0.2).clamp(-1, 1)
    targ = (torch.rand(1, 3, SIZE, SIZE, generator=g) * 0.4 - 0.3 * face).clamp(-1, 1)
    mask = face[None, None] * (torch.rand(1, 1, SIZE, SIZE, generator=g) > 0.1).float()  # blend mask, given
    points = np.zeros((68, 2), np.float32)
    points[[36, 39, 42, 45]] = [[85.3, 120.6], [115.8, 121.9], [140.2, 121.4], [171.7, 119.8]]
    x = torch.randn(1, 3, SIZE, SIZE, generator=g)
    noise, bg_noise = torch.randn(2, 1, 3, SIZE, SIZE, generator=g)
    return locals()


@pytest.fixture(scope="module")
def setup64(setup):
    """The same world in float64: one step's float32 rounding depends on the CPU's kernels (7.6e-6 on an AMX
    Xeon against 1.8e-6 elsewhere) and would hide an option that moves the step by 1.1e-5."""
    s = dict(setup)
    s["model"] = copy.deepcopy(setup["model"]).double()
    s["experts"] = Experts(*(copy.deepcopy(m).double() for m in (setup["experts"].embedder, setup["experts"].parser,
                                                                 setup["experts"].gaze)))
    for name in ("src", "targ", "mask", "x", "noise", "bg_noise"):
        s[name] = setup[name].double()
    return s


def source_id(experts, src):
    img = IMAGENET((src + 1) / 2)
    return F.normalize(experts.embedder.features(F.interpolate(img, (112, 112)))[0], p=2, dim=1)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("i", [60, 40, 20])
def test_one_official_ddpm_step_equals_the_original(setup64, i):
    s = setup64
    config = load_swap_config("official", {"views": 1})
    tab = spaced_tables()
    img_id = source_id(s["experts"], s["src"])
    want, want_x0 = original_ddpm_step(s["model"], tab, s["experts"], s["x"], i, img_id, s["src"], s["targ"], s["mask"],
                                       s["points"], s["noise"], s["bg_noise"])
    guide = prepare_guide(s["experts"], s["src"], s["targ"], config, torch.from_numpy(s["points"])[None], s["mask"])
    assert relative(guide.source_embedding, img_id) < 1e-5
    got, got_x0 = guided_step(s["model"], config.diffusion(), s["experts"], config, guide, s["x"], i,
                              s["noise"], s["bg_noise"])
    # float64, measured ≤ 6e-8 (the original's .float() rounds); one option off: ≥ 1.1e-5
    assert relative(got, want) < 1e-6, relative(got, want)
    assert relative(got_x0, want_x0) < 1e-6, relative(got_x0, want_x0)
    # and the same step under the corrections differs (each correction is visible in one step)
    fixed = load_swap_config("fixed", {"views": 1})
    other, _ = guided_step(s["model"], fixed.diffusion(), s["experts"], fixed,
                           prepare_guide(s["experts"], s["src"], s["targ"], fixed, torch.from_numpy(s["points"])[None],
                                         s["mask"]), s["x"], i, s["noise"], s["bg_noise"])
    assert relative(other, want) > 1e-3


def test_the_official_ddim_step_equals_the_original_and_does_not_blend(setup64):
    s = setup64
    config = load_swap_config("official", {"views": 1, "sampler": "ddim"})
    tab = spaced_tables()
    img_id = source_id(s["experts"], s["src"])
    want, want_x0 = original_ddim_step(s["model"], tab, s["experts"], s["x"], 40, img_id, s["src"], s["targ"],
                                       s["mask"], s["points"])
    guide = prepare_guide(s["experts"], s["src"], s["targ"], config, torch.from_numpy(s["points"])[None], s["mask"])
    got, got_x0 = guided_step(s["model"], config.diffusion(), s["experts"], config, guide, s["x"], 40,
                              s["noise"], s["bg_noise"])
    assert relative(got, want) < 1e-6 and relative(got_x0, want_x0) < 1e-6, (relative(got, want),
                                                                             relative(got_x0, want_x0))  # ≤ 1.9e-7


def test_the_official_blend_mask_comes_from_the_doubly_normalised_parser(setup):
    s = setup
    config = load_swap_config("official", {"gaze_weight": 0})
    guide = prepare_guide(s["experts"], s["src"], s["targ"], config)
    parsing = seg(s["experts"].parser, (s["targ"] + 1) / 2)[0].argmax(0)
    want = torch.isin(parsing, torch.tensor(IDS)).float()
    assert torch.equal(guide.mask[0, 0], want)


def test_identity_views_are_kornias_augmentation_after_one_clean_view():
    x = torch.rand(2, 3, 112, 112)
    views = identity_views(x, 8, torch.Generator().manual_seed(0))
    again = identity_views(x, 8, torch.Generator().manual_seed(0))
    assert views.shape == (16, 3, 112, 112) and torch.equal(views, again)  # repeatable from the generator
    assert torch.equal(views[:2], x)
    changed = [(views[k] - x[k % 2]).abs().max() > 1e-3 for k in range(2, 16)]
    assert sum(changed) >= 7  # p = 0.7 for each of the two augmentations: most views move
    state = torch.get_rng_state()
    identity_views(x, 8, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # kornia's draws do not disturb the global RNG


def test_sampling_options_are_checked():
    from facekit.errors import UserError

    with pytest.raises(UserError, match="embedder_resize must be one of antialias, nearest"):
        load_swap_config("official", {"embedder_resize": "bicubic"})
    with pytest.raises(UserError, match="unexpected keyword|unknown sampling settings"):
        load_swap_config("official", {"gaze_reduction": "mean"})
