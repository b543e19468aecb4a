"""`distilswap student ...`: build, import the official weights, inspect."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "student",
        help="build / import / inspect the MobileFaceSwap student",
        description="The MobileFaceSwap student: identity injection network + identity-aware dynamic network.",
    )
    commands = parser.add_subparsers(dest="student_command", metavar="ACTION", required=True)

    build = commands.add_parser(
        "build",
        help="write a freshly initialised student checkpoint",
        description="Write a randomly initialised student (safetensors). Example:\n"
        "  distilswap student build --resolution 224 --out runs/student_init.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    build.add_argument("--resolution", type=int, default=224, help="input size, a multiple of 32 (default 224)")
    build.add_argument("--width", type=float, default=1.0, help="channel multiplier for small experiments (default 1.0)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="overwrite an existing --out")
    build.set_defaults(func=_build)

    imp = commands.add_parser(
        "import",
        help="convert the official MobileFaceSwap_224.pdparams (no Paddle needed, nothing executed)",
        description="Convert the official Paddle checkpoint into a student checkpoint. The pickle is read with "
        "an unpickler that only allows numpy arrays. Example:\n"
        "  distilswap student import checkpoints/MobileFaceSwap_224.pdparams --out runs/official.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("pdparams", help="path to MobileFaceSwap_224.pdparams")
    imp.add_argument("--out", required=True, help="student checkpoint to write (.safetensors)")
    imp.add_argument("--force", action="store_true", help="overwrite an existing --out")
    imp.set_defaults(func=_import)

    info = commands.add_parser(
        "info",
        help="parameters and MACs of a student checkpoint",
        description="Print parameter counts (injection network, static per-frame network) and MACs of the "
        "per-frame network, counted by torch's FlopCounterMode and fvcore.",
    )
    info.add_argument("checkpoint", help="student checkpoint (.safetensors)")
    info.set_defaults(func=_info)


def _refuse_existing(path: str, force: bool) -> None:
    from pathlib import Path

    from facekit.errors import UserError

    if Path(path).exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it")


def _build(args: argparse.Namespace) -> int:
    import torch

    from student.checkpoint import save_student
    from student.config import StudentConfig, scaled
    from student.model import MobileFaceSwap

    _refuse_existing(args.out, args.force)
    torch.manual_seed(args.seed)
    config = scaled(StudentConfig(resolution=args.resolution), args.width)
    save_student(MobileFaceSwap(config), args.out, {"origin": f"random init, seed {args.seed}"})
    print(f"wrote {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from facekit.shipped import file_sha256
    from student.checkpoint import save_student
    from student.paddle_import import import_pdparams

    _refuse_existing(args.out, args.force)
    model = import_pdparams(args.pdparams)
    save_student(model, args.out, {"origin": "MobileFaceSwap official pdparams", "source_sha256": file_sha256(args.pdparams)})
    print(f"imported {args.pdparams} -> {args.out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    from student.checkpoint import load_student
    from student.complexity import count_macs, count_params

    model = load_student(args.checkpoint)
    config = model.config
    d = config.identity_dim
    net = model.bake(torch.nn.functional.normalize(torch.ones(1, d), dim=1), torch.zeros(1, d, 7, 7))
    macs = count_macs(net, (torch.rand(1, 3, config.resolution, config.resolution),))
    print(f"injection network (IIN + shared heads): {count_params(model):,} parameters")
    print(f"static per-frame network: {count_params(net):,} parameters ({count_params(net, True):,} with BN statistics)")
    print(
        f"per-frame MACs at {config.resolution}²: {macs.macs / 1e9:.4f} G (fvcore), "
        f"{macs.flop_counter_macs / 1e9:.4f} G (FlopCounterMode / 2); FLOPs = 2 × MACs"
    )
    return 0
