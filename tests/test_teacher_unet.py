"""The teacher UNet matches the official DiffFace layout and loads official checkpoints safely."""
import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facekit.errors import UserError
from teacher.checkpoint import infer_unet_config, load_official, load_teacher, save_weights
from teacher.unet import AttentionBlock, UNetConfig, UNetModel, load_unet_config, timestep_embedding

REFERENCE = Path("/work/shared/reference")
if not REFERENCE.is_dir():
    REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


def read_manifest(name: str) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    lines = (REFERENCE / name).read_text().splitlines()
    header = "\n".join(line for line in lines if line.startswith("#"))
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return header, [(row[0], tuple(int(d) for d in row[1].split("x"))) for row in rows]


def layout(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def test_full_size_layout_matches_official_manifest():
    _, expected = read_manifest("diffface_unet_256.tsv")
    with torch.device("meta"):
        model = UNetModel(load_unet_config("official_256"))
    assert layout(model) == expected
    assert sum(p.numel() for p in model.parameters()) == 554_388_998


def test_small_config_inferred_from_its_manifest_matches_exactly():
    header, expected = read_manifest("diffface_unet_small.tsv")
    flags = ast.literal_eval(header[header.index("{"): header.index("}") + 1])
    inferred = infer_unet_config(dict(expected), image_size=flags["image_size"])
    config = UNetConfig.from_dict({**inferred.to_dict(), "num_head_channels": flags["num_head_channels"]})
    assert config == load_unet_config("reference_small")
    assert config.attention_resolutions == tuple(int(r) for r in flags["attention_resolutions"].split(","))
    assert layout(UNetModel(config)) == expected


def legacy_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's QKVAttentionLegacy written out with einsum (heads split before q/k/v)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, -1)
    qkv = block.qkv(block.norm(flat))
    ch = c // block.num_heads
    q, k, v = qkv.reshape(b * block.num_heads, 3 * ch, -1).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    out = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (flat + block.proj_out(out)).reshape(b, c, h, w)


def test_attention_matches_legacy_head_order():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16)
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)  # zero-initialised otherwise: nothing to compare
    x = torch.randn(2, 64, 4, 4)
    assert torch.allclose(block(x), legacy_attention(block, x), atol=1e-5)


def test_identity_conditioning_is_added_to_the_timestep_embedding():
    torch.manual_seed(0)
    config = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), num_head_channels=32)
    model = UNetModel(config).eval()
    for p in model.parameters():  # leave the zero-initialised output convs non-zero so outputs depend on input
        torch.nn.init.normal_(p, std=0.05)
    t = torch.tensor([10, 900])
    identity = F.normalize(torch.randn(2, 512), dim=1)
    emb = model.embed(t, identity)
    expected = model.time_embed(timestep_embedding(t, 32)) + model.id_embed(identity)
    assert torch.allclose(emb, expected)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, t, identity)
    assert out.shape == (2, 6, 16, 16)  # eps and the variance interpolation (learned range)
    assert not torch.allclose(out, model(x, t, identity.flip(0)), atol=1e-4)
    # identity is its only other input: the same identity gives the same output per sample (no batch mixing)
    assert torch.allclose(model(x[:1], t[:1], identity[:1]), out[:1], atol=1e-5)


def test_official_checkpoint_loads_strictly_and_wrong_size_is_named(tmp_path):
    torch.manual_seed(0)
    config = load_unet_config("reference_small")
    reference = UNetModel(config)
    path = tmp_path / "Model.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_official(path, config)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(UserError, match=r"looks like a UNet with 32 channels, channel_mult \(1, 2, 3, 4\).*your config says"):
        load_official(path, load_unet_config("demo_64"))


def test_the_official_model_is_recognised_when_the_config_is_wrong():
    from teacher.checkpoint import build_for_state

    _, manifest = read_manifest("diffface_unet_256.tsv")
    official = {name: torch.empty(shape, device="meta") for name, shape in manifest}
    with pytest.raises(UserError, match=r"this looks like the 256² official DiffFace model; your config says 32 channels"):
        build_for_state(official, load_unet_config("demo_64"), "Model.pt")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "Model.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module: needs arbitrary unpickling
    with pytest.raises(UserError, match="never pickled code"):
        load_official(path, load_unet_config("reference_small"))


def test_own_weights_roundtrip_with_config(tmp_path):
    model = UNetModel(load_unet_config("demo_64"))
    save_weights(model, tmp_path / "teacher.safetensors", {"fraction": 0.5})
    loaded, metadata = load_teacher(tmp_path / "teacher.safetensors")
    assert loaded.config == model.config and metadata["fraction"] == 0.5
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def reference_forward(sd: dict, flags: dict, x: torch.Tensor, t: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's UNetModel + DiffFace's id_embed written out as plain functional ops over the state
    dict, block structure from the official flags (independent of teacher.unet's module tree)."""
    mc, mult, nrb = flags["num_channels"], (1, 2, 3, 4), flags["num_res_blocks"]
    attention = {flags["image_size"] // int(r) for r in flags["attention_resolutions"].split(",")}
    head = flags["num_head_channels"]

    def lin(p, h):
        return F.linear(h, sd[p + ".weight"], sd[p + ".bias"])

    def gn(p, h):
        return F.group_norm(h.float(), 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)

    def conv(p, h, pad=1):
        return F.conv2d(h, sd[p + ".weight"], sd[p + ".bias"], padding=pad)

    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = lin("time_embed.2", F.silu(lin("time_embed.0", torch.cat([torch.cos(args), torch.sin(args)], -1))))
    emb = emb + lin("id_embed.2", F.silu(lin("id_embed.0", identity)))

    def res(p, h, updown=None):
        a = F.silu(gn(p + ".in_layers.0", h))
        if updown == "down":
            a, h = F.avg_pool2d(a, 2), F.avg_pool2d(h, 2)
        elif updown == "up":
            a, h = F.interpolate(a, scale_factor=2, mode="nearest"), F.interpolate(h, scale_factor=2, mode="nearest")
        a = conv(p + ".in_layers.2", a)
        scale, shift = lin(p + ".emb_layers.1", F.silu(emb))[..., None, None].chunk(2, dim=1)
        a = conv(p + ".out_layers.3", F.silu(gn(p + ".out_layers.0", a) * (1 + scale) + shift))
        skip = conv(p + ".skip_connection", h, 0) if p + ".skip_connection.weight" in sd else h
        return skip + a

    def attn(p, h):
        b, c, hh, ww = h.shape
        flat = h.reshape(b, c, -1)
        qkv = F.conv1d(gn(p + ".norm", flat), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
        q, k, v = qkv.reshape(b * (c // head), 3 * head, -1).split(head, dim=1)
        s = 1 / math.sqrt(math.sqrt(head))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (flat + F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])).reshape(b, c, hh, ww)

    h = conv("input_blocks.0.0", x)
    skips, index, ds = [h], 1, 1
    for level in range(len(mult)):
        for _ in range(nrb):
            h = res(f"input_blocks.{index}.0", h)
            if ds in attention:
                h = attn(f"input_blocks.{index}.1", h)
            skips.append(h)
            index += 1
        if level != len(mult) - 1:
            h = res(f"input_blocks.{index}.0", h, "down")
            skips.append(h)
            index, ds = index + 1, ds * 2
    h = res("middle_block.2", attn("middle_block.1", res("middle_block.0", h)))
    index = 0
    for level in reversed(range(len(mult))):
        for i in range(nrb + 1):
            h = res(f"output_blocks.{index}.0", torch.cat([h, skips.pop()], dim=1))
            layer = 1
            if ds in attention:
                h, layer = attn(f"output_blocks.{index}.1", h), 2
            if level and i == nrb:
                h, ds = res(f"output_blocks.{index}.{layer}", h, "up"), ds // 2
            index += 1
    return conv("out.2", F.silu(gn("out.0", h)))


def test_forward_equals_a_plain_functional_reimplementation():
    header, _ = read_manifest("diffface_unet_small.tsv")
    flags = ast.literal_eval(header[header.index("{"): header.index("}") + 1])
    torch.manual_seed(0)
    model = UNetModel(load_unet_config("reference_small")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (1.0 / math.sqrt(max(p[0].numel(), 1))))
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([747, 3])
    identity = F.normalize(torch.randn(2, 512), dim=1)
    with torch.no_grad():
        ours = model(x, t, identity)
        reference = reference_forward(model.state_dict(), flags, x, t, identity)
    assert ours.shape == (2, 6, 64, 64)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_gradient_checkpointing_gives_the_same_gradients():
    config = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), num_head_channels=32)
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = UNetModel(UNetConfig.from_dict({**config.to_dict(), "use_checkpoint": use_checkpoint})).train()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
        torch.manual_seed(1)
        model(torch.randn(2, 3, 16, 16), torch.tensor([1, 500]), torch.randn(2, 512)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
