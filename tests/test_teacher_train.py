"""Teacher training: the hybrid + identity loss trains, checkpoints resume exactly, snapshots are kept."""
import json

import pytest
import torch
from safetensors.torch import load_file

from facekit.errors import UserError
from teacher.checkpoint import load_teacher
from teacher.train import load_train_config, snapshot_steps, train
from teacher_tiny import TINY_UNET, tiny_experts


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


def config(tmp_path, name, **overrides):
    unet = tmp_path / "unet.json"  # JSON is YAML
    unet.write_text(json.dumps(TINY_UNET.to_dict()))
    settings = dict(out=str(tmp_path / name), unet=str(unet.with_suffix(".json")), steps=4, batch_size=2,
                    checkpoint_every=2, log_every=1, image_every=4, snapshot_fractions=[0.5, 1.0], lr=1e-3)
    settings.update(overrides)
    return load_train_config(None, settings)


def test_resume_is_exact_and_snapshots_record_their_fraction(tmp_path):
    experts = tiny_experts()
    straight = train(config(tmp_path, "straight"), experts)
    interrupted = config(tmp_path, "resumed")
    train(interrupted, experts, stop_after=2)
    assert json.loads((tmp_path / "resumed/checkpoints/latest.json").read_text())["step"] == 2
    train(interrupted, experts)
    for kind in ("model", "ema"):
        a = load_file(str(straight / f"checkpoints/step_0000004.{kind}.safetensors"))
        b = load_file(str(tmp_path / f"resumed/checkpoints/step_0000004.{kind}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    snapshots = sorted((straight / "snapshots").glob("*.safetensors"))
    assert [p.name for p in snapshots] == ["step_0000002.safetensors", "step_0000004.safetensors"]
    model, meta = load_teacher(snapshots[0])
    assert meta["fraction"] == 0.5 and meta["snapshot_id"] == "step_0000002" and model.config == TINY_UNET
    # resuming with settings that change what the run computes is refused, naming each change
    for change, message in (({"steps": 6}, "steps 4 → 6"), ({"lr": 5e-4}, "lr 0.001 → 0.0005")):
        with pytest.raises(UserError, match=message):
            train(config(tmp_path, "resumed", **change), experts)
    train(config(tmp_path, "resumed", log_every=2), experts)  # bookkeeping settings may change
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight / "tb")).Reload()  # what a user watches while the teacher trains
    assert {"train/loss", "train/identity_change"} <= set(events.Tags()["scalars"])
    assert "train/x0_predx0_own-id_other-id" in events.Tags()["images"]


def test_batches_rendered_ahead_by_worker_processes_train_the_same_weights(tmp_path):
    """What a GPU run does (rendering in DataLoader workers) computes what one CPU process does, resumed too."""
    experts = tiny_experts()
    inline = train(config(tmp_path, "inline", data_workers=0), experts)
    ahead = config(tmp_path, "ahead", data_workers=2)
    train(ahead, experts, stop_after=1)
    train(ahead, experts)
    a = load_file(str(inline / "checkpoints/step_0000004.model.safetensors"))
    b = load_file(str(tmp_path / "ahead/checkpoints/step_0000004.model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    experts = tiny_experts()
    straight = train(config(tmp_path, "straight"), experts)
    damaged = config(tmp_path, "damaged")
    train(damaged, experts)
    state = tmp_path / "damaged/checkpoints/step_0000004.state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a copy cut short
    with caplog.at_level("WARNING"):
        train(damaged, experts)
    assert "checkpoint step 4 is damaged" in caplog.text and "resuming from step 2" in caplog.text
    a = load_file(str(straight / "checkpoints/step_0000004.model.safetensors"))
    b = load_file(str(tmp_path / "damaged/checkpoints/step_0000004.model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for step in (2, 4):  # nothing readable left: one clear line, no fresh start
        (tmp_path / f"damaged/checkpoints/step_{step:07d}.ema.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="every checkpoint is damaged"):
        train(damaged, experts)


@pytest.mark.parametrize("latest", ['{"step": "two"}', '{"step": 2.5}', '{"step": null}', '[2]'])
def test_a_hand_edited_latest_json_resumes_from_the_newest_files(tmp_path, latest):
    experts = tiny_experts()
    run = config(tmp_path, "run")
    train(run, experts, stop_after=2)
    (tmp_path / "run/checkpoints/latest.json").write_text(latest)
    train(run, experts)
    assert json.loads((tmp_path / "run/checkpoints/latest.json").read_text())["step"] == 4


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    experts = tiny_experts()
    fractions = [0.25, 0.5, 1.0]
    straight = train(config(tmp_path, "straight", steps=8, snapshot_fractions=fractions), experts)
    short = config(tmp_path, "short", steps=4, snapshot_fractions=[0.5, 1.0])
    train(short, experts)
    with pytest.raises(UserError, match=r"steps 4 → 8.*\(to train it longer, add --extend\)"):
        train(config(tmp_path, "short", steps=8, snapshot_fractions=fractions), experts)
    with pytest.raises(UserError, match=r"step_0000002.safetensors.*fractions including 0.25, 0.5"):
        train(config(tmp_path, "short", steps=8, snapshot_fractions=[0.5, 1.0]), experts, extend=True)
    with pytest.raises(UserError, match="lr 0.001 → 0.002"):  # only the length may change
        train(config(tmp_path, "short", steps=8, snapshot_fractions=fractions, lr=2e-3), experts, extend=True)
    longer = train(config(tmp_path, "short", steps=8, snapshot_fractions=fractions), experts, extend=True)
    for kind in ("model", "ema"):
        a = load_file(str(straight / f"checkpoints/step_0000008.{kind}.safetensors"))
        b = load_file(str(longer / f"checkpoints/step_0000008.{kind}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("step_0000002", "step_0000004", "step_0000008"):
        a, meta_a = load_teacher(straight / f"snapshots/{name}.safetensors")
        b, meta_b = load_teacher(longer / f"snapshots/{name}.safetensors")
        assert meta_a == meta_b and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    train(config(tmp_path, "short", steps=8, snapshot_fractions=fractions), experts)  # the extended run resumes plainly


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "batch_size must be a whole number ≥ 1, got 0"),
    ({"steps": "ten"}, "steps must be a whole number like 200, got 'ten'"),
    ({"lr": -1}, "lr must be a number > 0, got -1"),
    ({"checkpoint_every": 0}, "checkpoint_every must be a whole number ≥ 1"),
    ({"snapshot_fractions": [0, 2]}, r"snapshot_fractions must lie in \(0, 1\]"),
    ({"snapshot_fractions": ["abc"]}, "snapshot_fractions must be numbers"),
    ({"ema_rate": 1.5}, "ema_rate must be below 1"),
    ({"data_workers": -1}, "data_workers must be a whole number ≥ 0"),
    ({"focus_timesteps": [500, 2000]}, r"focus_timesteps must be two whole numbers 0 ≤ lo < hi ≤ diffusion_steps"),
    ({"focus_share": 0.5}, "focus_share must lie in .* and needs focus_timesteps, got 0.5"),
    ({"identity_dropout": 1.0}, r"identity_dropout must lie in \[0, 1\), got 1.0"),
    ({"low_frequency_noise": -0.1}, r"low_frequency_noise must lie in \[0, 1\), got -0.1"),
    ({"neck_mismatch": 1.5}, r"neck_mismatch must lie in \[0, 1\], got 1.5"),
    ({"recolour": -0.5}, r"recolour must lie in \[0, 1\], got -0.5"),
    ({"recolour_from": 1.0}, r"recolour_from must lie in \[0, 1\), got 1.0"),
])
def test_bad_training_values_are_one_clear_error(tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        config(tmp_path, "bad", **settings)


def test_a_fine_tune_starts_from_its_init_and_spends_its_share_on_the_focus(tmp_path):
    from teacher.train import sample_timesteps

    experts = tiny_experts()
    base = train(config(tmp_path, "base"), experts)
    init = str(base / "snapshots/step_0000004.safetensors")
    tune = config(tmp_path, "tune", init=init, focus_timesteps=[600, 1000], focus_share=0.8, steps=2,
                  snapshot_fractions=[1.0])
    start, _ = load_teacher(init)
    near = train(config(tmp_path, "near", init=init, steps=1, snapshot_fractions=[1.0], lr=1e-7), experts)
    stepped = load_file(str(near / "checkpoints/step_0000001.model.safetensors"))
    assert max(float((stepped[k] - v).abs().max()) for k, v in start.state_dict().items()) < 1e-6  # one Adam step
    train(tune, experts)
    with pytest.raises(UserError, match="focus_share 0.8 → 0.5"):  # what it computes is fixed on resume
        train(config(tmp_path, "tune", init=init, focus_timesteps=[600, 1000], focus_share=0.5, steps=2,
                     snapshot_fractions=[1.0]), experts)
    torch.manual_seed(0)
    t = sample_timesteps(20000, 1000, tune, torch.device("cpu"))
    share = float(((t >= 600) & (t < 1000)).float().mean())
    assert abs(share - (0.8 + 0.2 * 0.4)) < 0.02, share  # the focus share plus the uniform draws that land there
    assert int(t.min()) < 600  # the other levels are still trained
    plain = config(tmp_path, "plain")
    torch.manual_seed(0)
    uniform = sample_timesteps(8, 1000, plain, torch.device("cpu"))
    torch.manual_seed(0)
    assert torch.equal(uniform, torch.randint(0, 1000, (8,)))  # runs without a focus draw what they always drew


def test_identity_dropout_conditions_its_share_on_the_zero_identity_and_snapshots_record_it(tmp_path, monkeypatch):
    from teacher.diffusion import GaussianDiffusion

    conditions = []
    run_model = GaussianDiffusion.run_model
    monkeypatch.setattr(GaussianDiffusion, "run_model",
                        lambda self, model, x, t, identity, *a: (x.shape[0] == 16 and conditions.append(identity))
                        or run_model(self, model, x, t, identity, *a))  # the training batches, not the previews
    out = train(config(tmp_path, "dropout", identity_dropout=0.5, batch_size=16, image_every=100), tiny_experts())
    rows = torch.cat(conditions)
    dropped = rows.abs().sum(dim=1) == 0
    assert 0.25 < float(dropped.float().mean()) < 0.75, float(dropped.float().mean())  # 64 rows at p = 0.5
    assert torch.allclose(rows[~dropped].norm(dim=1), torch.ones(int((~dropped).sum())), atol=1e-4)  # the rest: D_I(x0)
    _, metadata = load_teacher(out / "snapshots/step_0000004.safetensors")
    assert metadata["identity_dropout"] == 0.5  # what sampling checks before classifier-free guidance
    with pytest.raises(UserError, match="identity_dropout 0.5 → 0.2"):  # fixed on resume
        train(config(tmp_path, "dropout", identity_dropout=0.2, batch_size=16, steps=6), tiny_experts())


def test_low_frequency_noise_trains_on_its_noise_and_sampling_follows_the_snapshot(tmp_path, monkeypatch):
    from teacher.sampling import for_teacher, load_swap_config

    drawn = []
    import teacher.train as train_module
    draw = train_module.diffusion_noise
    monkeypatch.setattr(train_module, "diffusion_noise", lambda like, share: drawn.append(share) or draw(like, share))
    out = train(config(tmp_path, "smooth", low_frequency_noise=0.3), tiny_experts())
    assert drawn == [0.3] * 4
    _, metadata = load_teacher(out / "snapshots/step_0000004.safetensors")
    sampling = for_teacher(load_swap_config("demo"), metadata, "t.safetensors")
    assert sampling.low_frequency_noise == 0.3 and sampling.to_dict()["low_frequency_noise"] == 0.3
    _, metadata = load_teacher(out / "checkpoints/step_0000004.ema.safetensors")  # a checkpoint's EMA samples too
    assert for_teacher(load_swap_config("demo"), metadata, "ema.safetensors").low_frequency_noise == 0.3
    assert for_teacher(load_swap_config("demo"), {}, "old.safetensors").low_frequency_noise == 0  # older snapshots
    assert "low_frequency_noise" not in load_swap_config("demo").to_dict()  # pair data sets made before still resume
    with pytest.raises(UserError, match="low_frequency_noise 0.3 → 0.0"):  # fixed on resume
        train(config(tmp_path, "smooth", steps=6), tiny_experts())


def test_a_fine_tune_of_another_unet_is_one_clear_error(tmp_path):
    experts = tiny_experts()
    base = train(config(tmp_path, "base"), experts)
    unet = tmp_path / "other.json"
    unet.write_text(json.dumps({**TINY_UNET.to_dict(), "model_channels": 2 * TINY_UNET.model_channels}))
    with pytest.raises(UserError, match="init .* is a different UNet"):
        train(config(tmp_path, "other", unet=str(unet), init=str(base / "snapshots/step_0000004.safetensors")),
              experts)


def test_neck_mismatch_draws_faces_on_another_persons_neck_and_nothing_else(tmp_path):
    from facekit.world.synthetic import NECK, face_mask
    from teacher.data import FaceSource, synthetic_faces

    plain, swapped = synthetic_faces(8, 3, 32), synthetic_faces(8, 3, 32, neck_mismatch=1.0)
    assert torch.equal(synthetic_faces(8, 3, 32, neck_mismatch=0.0)["image"], plain["image"])
    assert torch.equal(swapped["labels"], plain["labels"])  # the same people, poses and surroundings
    neck = (plain["labels"] == NECK)[:, None].float()
    face = face_mask(plain["labels"])[:, None] & (torch.nn.functional.max_pool2d(neck, 7, 1, 3) == 0)
    assert torch.equal(swapped["image"] * face, plain["image"] * face)  # 3 px from the neck: its soft edge
    changed = ((swapped["image"] - plain["image"]).abs() * neck).flatten(1).amax(1)
    assert (changed > 0.01).all(), changed  # every neck now has another person's tone
    with pytest.raises(UserError, match="neck_mismatch is a synthetic-world option"):
        FaceSource(str(tmp_path), 32, neck_mismatch=0.5)


def test_recolour_noises_high_t_samples_from_other_colours_and_still_asks_for_the_face(tmp_path, monkeypatch):
    from facekit.world.synthetic import face_mask
    from teacher import train as training
    from teacher.data import FaceSource, synthetic_faces
    from teacher.diffusion import GaussianDiffusion, extract
    from teacher.experts import to_model

    faces = synthetic_faces(4, 3, 32, recolour=True)
    assert torch.equal(faces["image"], synthetic_faces(4, 3, 32)["image"])  # runs without it render the same
    changed = (faces["recoloured"] - faces["image"]).abs().amax(1)
    near_face = torch.nn.functional.max_pool2d(face_mask(faces["labels"])[:, None].float(), 5, 1, 2)[:, 0] > 0
    assert changed[~near_face].max() < 1e-3 and (changed.amax((1, 2)) > 0.01).all()  # the face's colours only
    x0, recoloured = to_model(faces["image"]), to_model(faces["recoloured"])
    diffusion = GaussianDiffusion.create("linear", 1000)
    t = torch.tensor([100, 299, 300, 900])
    monkeypatch.setattr(training, "sample_timesteps", lambda *args: t)
    seen = {}

    def oracle(x_t, model_t, identity):  # denoises every x_t to the true face
        seen["x_t"] = x_t
        return torch.cat([diffusion.eps_from_pred_xstart(x_t, t, x0), torch.zeros_like(x_t)], dim=1)

    experts, settings = tiny_experts(), config(tmp_path, "c", recolour=1.0)
    torch.manual_seed(0)
    terms = training._losses(oracle, diffusion, experts, x0, settings, None, recoloured)
    torch.manual_seed(0)
    noise = torch.randn_like(x0)  # the first draw after t, as in _losses
    start = (seen["x_t"] - extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x0) * noise) \
        / extract(diffusion.sqrt_alphas_cumprod, t, x0)
    from_twin = [torch.allclose(s, r, atol=1e-3) and not torch.allclose(s, x, atol=1e-3)
                 for s, r, x in zip(start, recoloured, x0)]
    assert from_twin == [False, False, True, True]  # only from recolour_from·T up (0.3 by default)
    assert float(terms["mse"]) < 1e-8, "the loss's answer is the face itself, not its twin"
    with pytest.raises(UserError, match="recolour is a synthetic-world option"):
        FaceSource(str(tmp_path), 32, recolour=True)


def test_loss_goes_down_with_identity_term(tmp_path):
    from teacher.train import _losses
    from teacher.diffusion import GaussianDiffusion
    from teacher.data import synthetic_faces
    from teacher.experts import to_model
    from teacher_tiny import tiny_unet

    experts = tiny_experts()
    model = tiny_unet().train()
    diffusion = GaussianDiffusion.create("linear", 1000)
    x0 = to_model(synthetic_faces(4, 0, 32)["image"])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    cfg = config(tmp_path, "unused")
    losses = []
    for i in range(12):
        torch.manual_seed(i % 3)
        terms = _losses(model, diffusion, experts, x0, cfg, None)
        assert {"mse", "vb", "id", "loss"} <= set(terms)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert sum(losses[-3:]) < sum(losses[:3])


def test_snapshot_steps_and_bad_settings(tmp_path):
    assert snapshot_steps(1000, (0.1, 0.25, 0.5, 0.75, 1.0)) == {100: 0.1, 250: 0.25, 500: 0.5, 750: 0.75, 1000: 1.0}
    with pytest.raises(UserError, match="unknown training settings"):
        load_train_config(None, {"stepz": 3})
    cfg = config(tmp_path, "other")
    train(cfg, tiny_experts(), stop_after=1)
    bigger = config(tmp_path, "other", extra_unet={"model_channels": 64})
    with pytest.raises(UserError, match="different UNet"):
        train(bigger, tiny_experts())


def test_trains_from_a_folder_data_set(tmp_path):
    from facekit.world.folder_dataset import write_dataset_json
    from facekit.faces.imageio import write_image

    faces = tmp_path / "faces"
    faces.mkdir()
    rng = torch.Generator().manual_seed(0)
    with open(faces / "meta.jsonl", "w") as meta:
        for k in range(3):
            write_image(faces / f"p{k}.png", torch.rand(40, 40, 3, generator=rng).numpy())
            meta.write(json.dumps({"image": f"p{k}.png", "identity": f"p{k}", "split": "train", "landmarks5": None}) + "\n")
    write_dataset_json(faces, 40, True, 3)
    run = train(config(tmp_path, "folder", data=str(faces), steps=1, image_every=1), tiny_experts())
    assert (run / "checkpoints/step_0000001.ema.safetensors").is_file()
    with pytest.raises(UserError, match="not found"):
        train(config(tmp_path, "missing", data=str(tmp_path / "nowhere")), tiny_experts())


def test_ctrl_c_checkpoints_the_finished_step(tmp_path, monkeypatch):
    import os
    import signal

    from teacher import train as train_module

    real = train_module._losses
    calls = []

    def interrupt_during_step_2(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; the step still completes
        return real(*args)

    monkeypatch.setattr(train_module, "_losses", interrupt_during_step_2)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when run in the background
    cfg = config(tmp_path, "ctrl_c", checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_experts())
    assert json.loads((tmp_path / "ctrl_c/checkpoints/latest.json").read_text())["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, caplog, native):
    """Emulated bf16 on an AVX2-only CPU is ~14x slower than fp32: auto must not pick it there."""
    import teacher.train as train_module

    monkeypatch.setattr(train_module, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert train_module._autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert train_module._autocast_dtype("fp32", cpu) is None
    with caplog.at_level("WARNING"):
        assert train_module._autocast_dtype("bf16", cpu) == torch.bfloat16  # asked for: kept, but said
    assert ("emulated" in caplog.text) == (not native)
    with pytest.raises(UserError, match="precision must be"):
        train_module._autocast_dtype("fp16", cpu)
