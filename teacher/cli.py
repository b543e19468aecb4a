"""`distilswap teacher train|swap|evaluate|ship|bench` and `distilswap pairs generate|info|convert|bench`."""
from __future__ import annotations

import argparse

RAW = argparse.RawDescriptionHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    teacher = subparsers.add_parser(
        "teacher", help="train the DiffFace teacher, sample guided swaps",
        description="DiffFace: an identity-conditional diffusion model that swaps faces with identity, semantic "
        "and gaze guidance and target-preserving blending.")
    commands = teacher.add_subparsers(dest="teacher_command", metavar="ACTION", required=True)
    _add_train(commands)
    _add_swap(commands)
    _add_evaluate(commands)
    _add_ship(commands)
    _add_bench(commands)
    pairs = subparsers.add_parser(
        "pairs", help="write the teacher's paired swaps as shards",
        description="The paired data set the student is distilled from (format: facekit/pairs.py).")
    pair_commands = pairs.add_subparsers(dest="pairs_command", metavar="ACTION", required=True)
    _add_generate(pair_commands)
    _add_info(pair_commands)
    _add_convert(pair_commands)
    _add_pair_bench(pair_commands)


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train (or resume) a teacher", formatter_class=RAW,
        description="Train the identity-conditional UNet (noise + VLB + identity loss). Rerunning the same "
        "command resumes from the last checkpoint. Multi-GPU: launch with torchrun. Examples:\n"
        "  distilswap teacher train --config configs/teacher_train_demo.yaml --experts runs/experts\n"
        "  torchrun --nproc_per_node 8 distilswap.py teacher train --unet official_256 --data data/ffhq \\\n"
        "      --arcface checkpoints/Arcface.tar --steps 700000 --batch-size 6 --out runs/teacher256")
    train.add_argument("--config", help="YAML file of training settings (command-line options override it)")
    train.add_argument("--out", help="run directory (checkpoints, snapshots, TensorBoard)")
    train.add_argument("--unet", help="UNet preset (official_256, reference_small, demo_64) or YAML file")
    train.add_argument("--data", help="'synthetic' (rendered on the fly) or a face data set folder (from photos: "
                       "`distilswap faces --photos DIR --out DIR`)")
    _add_expert_args(train, guidance=False)
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int, dest="batch_size", help="per process")
    train.add_argument("--lr", type=float)
    train.add_argument("--lambda-id", type=float, dest="lambda_id",
                       help="weight of the 1 − cos identity loss on x̂0 (default 0.01, the official training code's)")
    train.add_argument("--ema-rate", type=float, dest="ema_rate")
    train.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    train.add_argument("--grad-checkpoint", action="store_const", const=True, dest="grad_checkpoint",
                       help="recompute activations in the backward pass (less memory, ~30%% slower)")
    train.add_argument("--snapshot-fractions", dest="snapshot_fractions",
                       help="comma-separated fractions of training at which EMA snapshots are kept "
                       "(default 0.1,0.25,0.5,0.75,1.0; the quality regressor learns from them)")
    train.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    train.add_argument("--seed", type=int)
    train.add_argument("--init", help="teacher weights (.safetensors) a new run fine-tunes instead of starting "
                       "from random ones (configs/teacher_finetune_synthetic.yaml)")
    train.add_argument("--data-workers", type=int, dest="data_workers",
                       help="processes rendering synthetic batches ahead (default: up to 8 on a GPU, none on CPU)")
    train.add_argument("--extend", action="store_true",
                       help="let a resumed run grow to a larger --steps (exact: its first steps are the ones taken); "
                       "its snapshots must sit at the new --snapshot-fractions and are relabelled")
    train.set_defaults(func=_train)


def _add_swap(commands: argparse._SubParsersAction) -> None:
    swap = commands.add_parser(
        "swap", help="swap faces with guided sampling", formatter_class=RAW,
        description="Put the identity of each source onto its target (aligned face crops; one source may go "
        "onto many targets). Examples:\n"
        "Writes OUT/NNN_<source>__<target>.png, NNN the pair's position (targets may share a file name).\n"
        "  distilswap teacher swap --teacher runs/teacher/snapshots/step_0000400.safetensors --experts runs/experts \\\n"
        "      --source a.png --target b.png c.png --preset demo --out runs/swaps\n"
        "  distilswap teacher swap --official checkpoints/Model.pt --unet official_256 --arcface checkpoints/Arcface.tar \\\n"
        "      --parser checkpoints/FaceParser.pth --gaze-model checkpoints/GazeEstimator.pt --preset official \\\n"
        "      --source src.png --target tgt.png --out runs/swaps --batch-size 4")
    _add_teacher_args(swap)
    swap.add_argument("--source", nargs="+", required=True, help="source face image(s)")
    swap.add_argument("--target", nargs="+", required=True, help="target face image(s)")
    swap.add_argument("--out", required=True, help="output directory")
    swap.add_argument("--batch-size", type=int, default=4, help="pairs sampled together (default 4)")
    swap.add_argument("--crop-style", choices=["arcface", "ffhq"],
                      help="how the inputs are aligned (where gaze guidance looks for the eyes): arcface "
                      "(synthetic world, facekit crops; the default with --teacher) or ffhq (the official "
                      "DiffFace 256² model's data; the default with --official)")
    swap.add_argument("--force", action="store_true", help="replace results already in --out")
    swap.add_argument("--seed", type=int, default=0)
    swap.set_defaults(func=_swap)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score guided swaps of held-out synthetic pairs against the ground truth (and ablate)",
        formatter_class=RAW,
        description="Swap held-out synthetic-world pairs and score them against the exact swap: face L1, SSIM, "
        "background kept, identity similarity by a --judge embedder the teacher never saw, geometry error. "
        "--ablation adds each guidance term one by one, blending off, three T̂ and the other sampler; several "
        "--preset values run the whole table for each. Writes OUT/<preset>/eval.md, eval.json, sheet.png, and "
        "OUT/samples.png + samples.md/.json: unguided samples of held-out identities and whether they follow them (the "
        "judge's similarity to their own identity vs another's; how far a sample moves when only its identity "
        "changes vs only its noise).\n"
        "  distilswap teacher evaluate --teacher models/teacher/step_0003000.safetensors --experts models/experts \\\n"
        "      --judge runs/judge --preset demo --preset demo_official --ablation --out runs/teacher_eval")
    evaluate.add_argument("--teacher", required=True, help="teacher weights (.safetensors)")
    _add_expert_args(evaluate, guidance=True)
    evaluate.add_argument("--judge", required=True, help="identity model for scoring only (small-experts folder, "
                          "ArcFace checkpoint or ONNX): not the guidance's embedder")
    evaluate.add_argument("--pairs", type=int, default=64, help="held-out pairs (default 64)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--seed", type=int, help="world seed of the held-out pairs (default: far from training's)")
    evaluate.add_argument("--ablation", action="store_true", help="also each variant of the sampler")
    evaluate.add_argument("--out", required=True, help="report directory")
    evaluate.add_argument("--device", default="cpu")
    _add_sampling_args(evaluate, multiple=True)
    evaluate.set_defaults(func=_evaluate)


def _add_ship(commands: argparse._SubParsersAction) -> None:
    ship = commands.add_parser(
        "ship", help="pack a finished teacher run and its experts as fp16 files with a sha256 manifest",
        formatter_class=RAW,
        description="What `models/` holds: every snapshot of the run and the experts it was trained with, in "
        "fp16, and manifest.json (how they were made, steps, wall time, data seed, sha256 of each file; "
        "loaders refuse a shipped file that does not match it). Example:\n"
        "  distilswap teacher ship --run runs/teacher_synthetic --experts runs/synth_experts --out models \\\n"
        "      --made-by 'distilswap teacher train --config configs/teacher_train_synthetic.yaml ...'")
    ship.add_argument("--run", required=True, help="the --out of a finished `distilswap teacher train`")
    ship.add_argument("--experts", required=True, help="the small-experts folder the run was trained with")
    ship.add_argument("--out", required=True, help="folder to write (e.g. models)")
    ship.add_argument("--made-by", action="append", default=[], dest="made_by",
                      help="a command that made these files, recorded in the manifest (repeat, in order)")
    ship.add_argument("--snapshot-steps", dest="snapshot_steps",
                      help="comma-separated steps of the snapshots to ship (default: all; the last is always shipped)")
    ship.add_argument("--force", action="store_true", help="replace models already in --out")
    ship.set_defaults(func=_ship)


def _add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench", help="time guided sampling: swaps/minute per batch and UNet variant, ours vs the official loop",
        formatter_class=RAW,
        description="Timing only (random weights are fine). Each batch size x variant: a guided step of ours (one "
        "UNet pass) and of the official loop (two passes) in the same rounds, swaps/minute, and the speed-up over "
        "the official loop as the original runs it (one pair at a time, fp32). Examples:\n"
        "  distilswap teacher bench --unet demo_64 --preset demo --batch-size 8 --threads 2\n"
        "  distilswap teacher bench --unet official_256 --preset official --random-experts official \\\n"
        "      --device cuda --batch-size 8,16,32 --variants fp32,bf16,bf16+channels_last,bf16+channels_last+compile "
        "--out runs/teacher_bench256")
    bench.add_argument("--teacher", help="teacher weights (default: a random UNet of --unet)")
    bench.add_argument("--unet", default="demo_64", help="UNet preset or YAML when no --teacher")
    _add_expert_args(bench, guidance=True)
    bench.add_argument("--random-experts", choices=("small", "official"), default="small",
                       help="without --experts/--arcface: random experts at small widths, or at the official sizes "
                       "(IR-SE ArcFace, BiSeNet at 512, EyeNet gaze) for the official configuration's cost")
    bench.add_argument("--batch-size", default="8", help="one batch size or a comma list, e.g. 8,16,32")
    bench.add_argument("--variants", default="fp32",
                       help="how the UNet runs, comma list of fp32 or bf16 joined with channels_last and compile by "
                       "'+' (default fp32; bf16 pays only where the CPU or GPU computes it)")
    bench.add_argument("--repeats", type=int, default=3, help="timed rounds (medians are reported)")
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--out", help="folder for bench.json and bench.md (default: print the table only)")
    bench.add_argument("--force", action="store_true", help="replace the bench.json and bench.md already in --out")
    _add_sampling_args(bench)
    bench.set_defaults(func=_bench)


def _add_generate(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser(
        "generate", help="generate (or resume) a sharded pairs data set", formatter_class=RAW,
        description="Swap random synthetic-world (source, target) pairs with a teacher and write shards. Safe "
        "to interrupt: rerun the same command to resume. torchrun spreads shards over processes. Examples:\n"
        "  distilswap pairs generate --teacher oracle --experts runs/experts --total 2000 --out runs/pairs\n"
        "  distilswap pairs generate --teacher diffface --snapshots runs/teacher/snapshots/*.safetensors \\\n"
        "      --experts runs/experts --preset demo --total 512 --out runs/pairs_diffface")
    generate.add_argument("--teacher", choices=["oracle", "diffface", "onnx"], default="oracle",
                          help="oracle: the synthetic world's true swap, degraded per snapshot fraction; "
                          "diffface: guided sampling with --snapshots; onnx: a one-shot swapper file (--onnx)")
    generate.add_argument("--onnx", help="ONNX swapper with inputs 'target' and 'source' (e.g. inswapper_128.onnx)")
    generate.add_argument("--onnx-emap", action="store_true",
                          help="map the source embedding by the file's last initializer (inswapper's emap)")
    generate.add_argument("--onnx-pixels", default="unit", choices=["unit", "imagenet", "signed"],
                          help="what a one-shot ONNX swapper's crop input holds: unit [0,1] (inswapper, default), imagenet (SimSwap as FaceFusion runs it), signed [-1,1] (GHOST)")
    generate.add_argument("--snapshots", nargs="+", default=[], help="teacher weight files (diffface teacher)")
    generate.add_argument("--fractions", default="0.1,0.25,0.5,0.75,1.0",
                          help="oracle snapshot fractions (default 0.1,0.25,0.5,0.75,1.0)")
    generate.add_argument("--total", type=int, required=True, help="number of pairs")
    generate.add_argument("--shard-size", type=int, default=64)
    generate.add_argument("--batch-size", type=int, default=8, help="pairs sampled together (diffface teacher)")
    generate.add_argument("--image-size", type=int, default=64, help="crop size (diffface: the teacher's)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--image-codec", choices=["png", "webp"], default="png",
                          help="lossless image encoding in the shards: png (fast) or webp (~35%% smaller at 256², "
                          "~12x slower to encode)")
    generate.add_argument("--data", default="synthetic",
                          help="'synthetic' (default) or a face data set folder, e.g. from `distilswap faces` (diffface "
                          "teacher)")
    generate.add_argument("--out", required=True, help="data set directory")
    _add_expert_args(generate, guidance=True)
    _add_sampling_args(generate)
    generate.add_argument("--device", default="cpu")
    generate.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="UNet precision (bf16 on GPUs)")
    generate.set_defaults(func=_generate)


def _add_info(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="summarise a pairs data set (pairs, shards, bytes per pair)")
    info.add_argument("root")
    info.set_defaults(func=_info)


def _add_convert(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser(
        "convert", help="rewrite a version-1 pairs data set (raw safetensors shards) in the current format",
        description="Version 1 stored raw uint8 tensors in one safetensors file per shard; version 2 stores "
        "WebDataset tar shards of lossless images with a metadata index. The old folder is read, never changed.\n"
        "  distilswap pairs convert runs/pairs_v1 --out runs/pairs", formatter_class=RAW)
    convert.add_argument("root", help="version-1 pairs data set")
    convert.add_argument("--out", required=True, help="new folder for the version-2 data set")
    convert.add_argument("--image-codec", choices=["png", "webp"], default="png")
    convert.set_defaults(func=_convert)


def _add_pair_bench(commands: argparse._SubParsersAction) -> None:
    pair_bench = commands.add_parser(
        "bench", help="measure the pair format here: pairs/s written and streamed back, bytes per pair",
        description="Writes synthetic-world pairs at each --size into --out, then streams them back with 1, 2 and 4 "
        "decoding threads; writes OUT/bench.md and bench.json.\n  distilswap pairs bench --out runs/pair_bench",
        formatter_class=RAW)
    pair_bench.add_argument("--out", required=True, help="new folder for the benchmark's shards and report")
    pair_bench.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    pair_bench.add_argument("--pairs", type=int, default=256, help="pairs per size (default 256)")
    pair_bench.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="decoding threads to time")
    pair_bench.add_argument("--image-codec", choices=["png", "webp"], default="png")
    pair_bench.set_defaults(func=_pairs_bench)


def _add_expert_args(parser: argparse.ArgumentParser, guidance: bool) -> None:
    parser.add_argument("--experts", help="directory of small trained experts (synthetic world)")
    parser.add_argument("--arcface", help="official Arcface.tar (identity embedder)")
    if guidance:
        parser.add_argument("--parser", help="official FaceParser.pth (semantic guidance and blend mask)")
        parser.add_argument("--gaze-model", dest="gaze_model", help="official GazeEstimator.pt (gaze guidance)")


def _add_sampling_args(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    group = parser.add_argument_group("sampling (override the preset)")
    presets = "official | fixed | paper | demo | demo_official | demo_cfg, or a YAML file (teacher/presets/swap_*.yaml)"
    if multiple:
        group.add_argument("--preset", action="append", help=presets + "; repeat to compare (default official)")
    else:
        group.add_argument("--preset", default="official", help=presets)
    group.add_argument("--steps", type=int, dest="respacing", help="respaced sampling steps (official 100)")
    group.add_argument("--skip", type=int, help="first steps skipped; sampling starts from the noised target")
    group.add_argument("--sampler", choices=["ddpm", "ddim"])
    group.add_argument("--eta", type=float, help="DDIM stochasticity")
    group.add_argument("--id-weight", type=float, dest="id_weight", help="λ_id (paper 2000, code 6000)")
    group.add_argument("--sem-weight", type=float, dest="sem_weight", help="λ_sem (paper 150, code 200); 0 = off")
    group.add_argument("--gaze-weight", type=float, dest="gaze_weight", help="λ_gaze (200); 0 = off")
    group.add_argument("--gaze-window", type=int, nargs=2, dest="gaze_window", metavar=("LO", "HI"),
                       help="gaze guidance only while LO < t < HI (official 10 50)")
    group.add_argument("--target-mse-weight", type=float, dest="target_mse_weight", help="official code 50, paper 0")
    group.add_argument("--views", type=int, help="extending augmentation views for identity guidance (8)")
    group.add_argument("--mask-ramp", type=int, dest="mask_ramp",
                       help="T̂: larger keeps more of the source's face shape, smaller more target structure")
    group.add_argument("--cfg-scale", type=float, dest="cfg_scale",
                       help="classifier-free guidance on the identity (1 = off, as DiffFace; needs a teacher trained "
                            "with identity_dropout)")


def _add_teacher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", help="teacher weights written by `teacher train` (.safetensors)")
    parser.add_argument("--official", help="the official DiffFace Model.pt (with --unet official_256)")
    parser.add_argument("--unet", default="official_256", help="UNet preset or YAML for --official")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="UNet precision (bf16 on GPUs)")
    _add_expert_args(parser, guidance=True)
    _add_sampling_args(parser)


def _sampling_overrides(args: argparse.Namespace) -> dict:
    keys = ("respacing", "skip", "sampler", "eta", "id_weight", "sem_weight", "gaze_weight", "gaze_window",
            "target_mse_weight", "views", "mask_ramp", "cfg_scale")
    return {k: getattr(args, k) for k in keys}


def _train(args: argparse.Namespace) -> int:
    from teacher.train import load_train_config, train

    overrides = {k: getattr(args, k) for k in ("out", "unet", "data", "experts", "arcface", "steps", "batch_size",
                                               "lr", "lambda_id", "ema_rate", "precision", "grad_checkpoint",
                                               "checkpoint_every", "seed", "data_workers", "init")}
    if args.snapshot_fractions:
        overrides["snapshot_fractions"] = args.snapshot_fractions.split(",")  # checked with the YAML's
    config = load_train_config(args.config, overrides)
    out = train(config, extend=args.extend)
    print(f"teacher trained: {out}/snapshots (EMA weights at {list(config.snapshot_fractions)} of training)")
    return 0


def _load_images(paths: list[str], size: int):
    import torch
    import torch.nn.functional as F

    from facekit.faces.imageio import read_image

    images = [torch.from_numpy(read_image(p)).permute(2, 0, 1).float() / 255 for p in paths]
    return torch.stack([F.interpolate(im[None], size=(size, size), mode="bilinear", antialias=True,
                                      align_corners=False)[0] for im in images])


def _swap(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from facekit.faces.align import template_points
    from facekit.errors import UserError
    from facekit.files import make_dir
    from facekit.faces.imageio import write_image
    from teacher.experts import load_experts, to_model
    from teacher.sampling import for_teacher, guided_swap, load_swap_config

    if bool(args.teacher) == bool(args.official):
        raise UserError("pass exactly one of --teacher (our weights) or --official (DiffFace's Model.pt)")
    if len(args.source) not in (1, len(args.target)):
        raise UserError(f"{len(args.source)} sources for {len(args.target)} targets: pass one source or one per target")
    if args.official:
        from teacher.checkpoint import load_official
        from teacher.unet import load_unet_config

        model, metadata = load_official(args.official, load_unet_config(args.unet)).to(args.device).eval(), {}
    else:
        from teacher.checkpoint import load_teacher

        model, metadata = load_teacher(args.teacher, args.device)
    config = for_teacher(load_swap_config(args.preset, _sampling_overrides(args)), metadata,
                         args.teacher or args.official)
    experts = load_experts(args.experts, args.arcface, args.parser, args.gaze_model)
    for module in (experts.embedder, experts.parser):
        if module is not None:
            module.to(args.device)
    size = model.config.image_size
    sources = args.source * len(args.target) if len(args.source) == 1 else args.source
    out = Path(args.out)
    names = [out / f"{k:03d}_{Path(src).stem}__{Path(tgt).stem}.png" for k, (src, tgt) in enumerate(zip(sources, args.target))]
    existing = [str(p) for p in names if p.exists()]
    if existing and not args.force:
        raise UserError(f"{existing[0]} already exists ({len(existing)} result(s) in {out}); pass --force to replace them")
    make_dir(out)
    # Inputs are aligned crops, so the target's eyes sit on the template of their crop style (gaze's eye boxes).
    style = args.crop_style or ("ffhq" if args.official else "arcface")
    landmarks = torch.from_numpy(template_points(size, style=style).astype(np.float32))
    generator = torch.Generator().manual_seed(args.seed)
    for start in range(0, len(args.target), args.batch_size):
        src_paths, tgt_paths = sources[start:start + args.batch_size], args.target[start:start + args.batch_size]
        source = to_model(_load_images(src_paths, size)).to(args.device)
        target = to_model(_load_images(tgt_paths, size)).to(args.device)
        result = guided_swap(model, experts, source, target, config, generator=generator, progress=True,
                             autocast=torch.bfloat16 if args.precision == "bf16" else None,
                             landmarks=landmarks.expand(len(tgt_paths), -1, -1).to(args.device))
        for src, tgt, path, image, ok in zip(src_paths, tgt_paths, names[start:], result.swap, result.valid):
            if not ok:
                print(f"skipped {src} -> {tgt}: sampling diverged (NaN)")
                continue
            write_image(path, ((image.cpu() + 1) / 2).permute(1, 2, 0).numpy())
            print(f"wrote {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from facekit.errors import UserError
    from facekit.files import atomic_write_text
    from teacher.bench import bench_grid, markdown, parse_variants
    from teacher.sampling import load_swap_config

    try:
        batches = [int(b) for b in args.batch_size.split(",")]
    except ValueError:
        batches = [0]
    if min(batches) < 1 or args.repeats < 1:
        raise UserError(f"--batch-size and --repeats must be at least 1, got {args.batch_size} and {args.repeats}")
    variants = parse_variants(args.variants)
    out = Path(args.out) if args.out else None
    if out and not args.force and any((out / name).exists() for name in ("bench.json", "bench.md")):
        raise UserError(f"{out} already holds a teacher bench; pass --force to replace it or another --out")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.teacher:
        from teacher.checkpoint import load_teacher

        model, _ = load_teacher(args.teacher, args.device)
    else:
        from teacher.unet import UNetModel, load_unet_config

        model = UNetModel(load_unet_config(args.unet)).to(args.device).eval()
    experts = _bench_experts(args, model.config.image_size)
    overrides = _sampling_overrides(args)
    if experts.gaze is None:
        overrides["gaze_weight"] = 0
    config = load_swap_config(args.preset, overrides)
    report = bench_grid(model, experts, config, batches, variants, args.repeats, args.device)
    title = f"Teacher sampling cost: {args.teacher or args.unet}, preset {args.preset}"
    table = markdown(report, title)
    if out:
        atomic_write_text(out / "bench.json", json.dumps(report, indent=1))
        atomic_write_text(out / "bench.md", table)
    print(table)
    return 0


def _bench_experts(args: argparse.Namespace, image_size: int):
    """The experts to time: the user's, or random ones (small, or at the official sizes)."""
    from facekit.experts.arcface import IRSEArcFace
    from facekit.experts.bisenet import BiSeNet
    from facekit.experts.eyenet import EyeNet
    from facekit.experts.frozen import freeze
    from teacher.experts import Experts, load_experts

    if args.experts or args.arcface:
        experts = load_experts(args.experts, args.arcface, args.parser, args.gaze_model)
    elif args.random_experts == "official":
        experts = Experts(freeze(IRSEArcFace()), freeze(BiSeNet()), freeze(EyeNet()))
        print("experts: random, at the official sizes (IR-SE ArcFace, BiSeNet at 512², EyeNet)")
    else:
        experts = Experts(freeze(IRSEArcFace(blocks=(2, 2, 2, 2), widths=(16, 32, 64, 128))),
                          freeze(BiSeNet(width=0.25, input_size=image_size)))
        print("experts: random small IR-SE (2,2,2,2 blocks, widths 16-128) and BiSeNet (width 0.25)")
    for module in (experts.embedder, experts.parser, experts.gaze):
        if module is not None:
            module.to(args.device)
    return experts


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facekit.errors import UserError
    from facekit.experts.expert_loader import load_embedder
    from teacher.checkpoint import load_teacher
    from teacher.evaluate import (HELD_OUT_SEED, ablation, evaluate_teacher, unguided_samples, write_report,
                                  write_samples)
    from teacher.experts import load_experts
    from teacher.sampling import for_teacher, load_swap_config

    if args.pairs < 1 or args.batch_size < 1:
        raise UserError(f"--pairs and --batch-size must be at least 1, got {args.pairs} and {args.batch_size}")
    model, metadata = load_teacher(args.teacher, args.device)
    experts = load_experts(args.experts, args.arcface, args.parser, args.gaze_model)
    overrides = _sampling_overrides(args)
    if experts.gaze is None:
        overrides["gaze_weight"] = 0
    configs = {preset: for_teacher(load_swap_config(preset, overrides), metadata, args.teacher)
               for preset in args.preset or ["official"]}
    judge = load_embedder(args.judge)
    seed = HELD_OUT_SEED if args.seed is None else args.seed
    # unguided, but with the first preset's classifier-free guidance: the teacher's own use of its identity
    print(write_samples(*unguided_samples(model, experts, judge, seed=seed, sampling=next(iter(configs.values()))),
                        args.out))
    for preset, config in configs.items():
        variants = ablation(config, experts.gaze is not None) if args.ablation else {"full": {}}
        results, swaps, job = evaluate_teacher(model, experts, judge, config, variants, args.pairs, args.batch_size,
                                               seed, args.device)
        out = write_report(results, swaps, job, Path(args.out) / Path(preset).stem)
        print((out / "eval.md").read_text())
    return 0


def _ship(args: argparse.Namespace) -> int:
    from facekit.errors import UserError
    from teacher.ship import ship

    steps = None
    if args.snapshot_steps:
        try:
            steps = [int(s) for s in args.snapshot_steps.split(",")]
        except ValueError:
            raise UserError(f"--snapshot-steps {args.snapshot_steps}: expected whole numbers like 300,1500,3000") from None
    out = ship(args.run, args.experts, args.out, args.made_by, args.force, steps)
    print(f"shipped {args.run} and {args.experts} to {out} (manifest: {out}/manifest.json)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import glob

    import torch

    from facekit.errors import UserError
    from teacher.experts import load_experts
    from facekit.pairs import check_destination
    from teacher.pairs import DiffusionTeacher, OracleTeacher, generate_pairs

    check_destination(args.out, args.total, args.shard_size)  # cheap checks before any model loads
    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise UserError(f"--fractions {args.fractions}: expected comma-separated numbers in (0, 1]") from None
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise UserError(f"--fractions {args.fractions}: every fraction must lie in (0, 1]")
    if args.teacher == "diffface" and not args.snapshots:
        raise UserError("--teacher diffface needs --snapshots (weights from `distilswap teacher train`)")
    experts = load_experts(args.experts, args.arcface, getattr(args, "parser", None), args.gaze_model)
    experts.embedder.to(args.device)
    if args.teacher == "oracle":
        teacher = OracleTeacher(fractions)
    elif args.teacher == "onnx":
        from teacher.pairs import OnnxTeacher

        if not args.onnx:
            raise UserError("--teacher onnx needs --onnx FILE (inputs 'target' and 'source')")
        teacher = OnnxTeacher(args.onnx, experts, args.onnx_emap, args.onnx_pixels)
    else:
        paths = sorted(p for pattern in args.snapshots for p in (glob.glob(pattern) or [pattern]))
        if not paths:
            raise UserError("--teacher diffface needs --snapshots (weights from `distilswap teacher train`)")
        from teacher.sampling import load_swap_config

        teacher = DiffusionTeacher(paths, experts, load_swap_config(args.preset, _sampling_overrides(args)), args.device,
                                   torch.bfloat16 if args.precision == "bf16" else None, args.batch_size)
        if experts.parser is not None:
            experts.parser.to(args.device)
        if teacher.models[0].config.image_size != args.image_size:
            raise UserError(f"--image-size {args.image_size} but the teacher works at "
                            f"{teacher.models[0].config.image_size}²: pass --image-size {teacher.models[0].config.image_size}")
    summary = generate_pairs(args.out, teacher, experts, args.total, args.shard_size, args.image_size, args.seed,
                             data=args.data, image_codec=args.image_codec)
    print(f"{args.out}: wrote {summary['written']} pairs in {summary['shards']} shards, dropped {summary['dropped']}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from facekit.pairs import PairDataset, finished_shards

    data = PairDataset(args.root)
    m = data.manifest
    stored = sum(info.get("bytes", 0) for info in finished_shards(args.root).values())
    raw = len(data) * m["image_size"] ** 2 * (3 * 3 + 1 + (3 if data.records and "truth" in data[0] else 0))
    print(f"{args.root}: {len(data)} of {m['total_pairs']} pairs in {len(data.shards)}/{m['num_shards']} shards, "
          f"{m['image_size']}², teacher {m['teacher']['kind']} with snapshots "
          f"{[s['id'] for s in m['teacher']['snapshots']]}; {stored / max(len(data), 1) / 1e3:.1f} kB a pair "
          f"({m.get('image_codec', 'png')}, {100 * stored / max(raw, 1):.0f} % of raw uint8)")
    return 0


def _pairs_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facekit.errors import UserError
    from teacher.pair_bench import bench_pairs

    if args.pairs < 1 or min(args.sizes) < 8 or min(args.workers) < 1:
        raise UserError(f"--pairs {args.pairs}, --sizes {args.sizes}, --workers {args.workers}: need >= 1, >= 8, >= 1")
    bench_pairs(args.out, args.sizes, args.pairs, min(64, args.pairs), args.workers, args.image_codec)
    print((Path(args.out) / "bench.md").read_text())
    return 0


def _convert(args: argparse.Namespace) -> int:
    from facekit.pair_convert import convert_v1

    summary = convert_v1(args.root, args.out, args.image_codec)
    print(f"{args.out}: {summary['pairs']} pairs in {summary['shards']} shards ({summary['bytes'] / 1e6:.1f} MB, "
          f"was {summary['v1_bytes'] / 1e6:.1f} MB)")
    return 0
