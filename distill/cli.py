"""`distilswap quality train|score` and `distilswap distill` (imports only argparse at module level)."""
from __future__ import annotations

import argparse

QUALITY_DESCRIPTION = """\
The quality regressor Q (ResNet-18) learns, from the teacher's pairs, which training fraction of the teacher
produced each swap; its score and the teacher's identity similarity give the reweighting coefficient a.

examples:
  distilswap quality train --pairs runs/pairs --out runs/quality.safetensors
  distilswap quality score --pairs runs/pairs --model runs/quality.safetensors   # writes runs/pairs/scores.json"""

DISTILL_DESCRIPTION = """\
Distil the MobileFaceSwap student from the teacher's pairs: a·(L1 + perceptual) to the teacher's swap (and
L1 of the generated image before fusion), identity loss to the source, weak mask loss on the target's
background. Rerun the same command to resume. --judge names a second identity model for the held-out table.

examples:
  distilswap distill --pairs runs/pairs --experts runs/experts --out runs/distill --config configs/distill_synthetic.yaml
  distilswap distill ... --reweight off --out runs/distill_noreweight          # the ablation
  distilswap compare runs/distill runs/distill_noreweight --out runs/ablation   # what reweighting buys
  distilswap student import MobileFaceSwap_224.pdparams --out official.safetensors
  distilswap distill ... --init official.safetensors --config configs/distill_finetune.yaml
  torchrun --nproc_per_node 8 distilswap.py distill ...                        # DDP"""


def register(subparsers: argparse._SubParsersAction) -> None:
    quality = subparsers.add_parser("quality", help="train the quality regressor and score pairs",
                                    description=QUALITY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = quality.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="fit Q on the pairs' training fractions (split by identity)")
    train.add_argument("--pairs", required=True, help="pair directory from `distilswap pairs generate`")
    train.add_argument("--out", required=True, help="quality model file to write (.safetensors)")
    train.add_argument("--imagenet-weights", help="local torchvision resnet18 state dict (else random init)")
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--input-size", type=int, default=224, help="Q's input size (swaps are resized)")
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--val-fraction", type=float, default=0.2, help="share of identities held out")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--stream", action="store_true",
                       help="stream training pairs from the shards instead of holding them in memory (sets larger "
                       "than memory always stream)")
    train.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    train.set_defaults(func=quality_train)

    score = actions.add_parser("score", help="add Q's score, cos² identity and a to every pair (scores file)")
    score.add_argument("--pairs", required=True)
    score.add_argument("--model", required=True, help="quality model from `quality train`")
    score.add_argument("--combination", default="product", choices=("product", "identity", "quality", "off"),
                       help="a = cos²·Q (product, default), cos² only, Q only, or 1 (off)")
    score.add_argument("--out", help="scores file (default PAIRS/scores.json; the shards are not rewritten)")
    score.add_argument("--histogram", help="PNG histogram of a (default next to the scores file)")
    score.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    score.set_defaults(func=quality_score)

    distill = subparsers.add_parser("distill", help="distil the student from scored pairs",
                                    description=DISTILL_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_argument("--pairs", required=True)
    distill.add_argument("--out", required=True, help="run directory (checkpoint, tb/, samples/, student, eval)")
    distill.add_argument("--config", help="YAML preset (configs/distill_*.yaml)")
    distill.add_argument("--scores", help="scores file (default PAIRS/scores.json)")
    distill.add_argument("--reweight", choices=("product", "identity", "quality", "off"),
                         help="combination for a; off = plain distillation (ablation)")
    distill.add_argument("--experts", help="directory of small experts (`distilswap experts train`)")
    distill.add_argument("--arcface", help="identity expert file (Arcface.tar / arcface.pdparams)")
    distill.add_argument("--parser", help="face parser file (FaceParser.pth) for the weak mask loss")
    distill.add_argument("--no-parser", action="store_true",
                         help="leave the parser out: the mask loss uses the teacher's blend mask, the perceptual "
                              "loss (without VGG) only the identity features")
    distill.add_argument("--judge", help="identity model for the evaluation only (small-experts folder, ArcFace "
                         "checkpoint or ONNX); default the training embedder, which flatters the student")
    distill.add_argument("--init", help="student checkpoint to start from (e.g. imported official weights)")
    distill.add_argument("--vgg-weights", help="local torchvision vgg16 state dict for the perceptual loss")
    distill.add_argument("--steps", type=int)
    distill.add_argument("--batch-size", type=int)
    distill.add_argument("--lr", type=float)
    distill.add_argument("--width", type=float, help="student channel multiplier (1.0 = paper)")
    distill.add_argument("--seed", type=int)
    distill.add_argument("--stream", action="store_true", default=None,
                         help="stream training pairs from the shards (8 shards mixed at a time, decoding threads) instead of "
                         "holding them in memory; sets larger than memory always stream")
    distill.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    distill.set_defaults(func=run_distill)

    compare = subparsers.add_parser(
        "compare", help="distillation runs' held-out tables side by side (e.g. the reweighting ablation)",
        description="Put finished `distilswap distill` runs (same --judge) side by side with the teacher, the "
                    "do-nothing floor (the target) and the ceiling (ground truth): compare.md + compare.png.\n"
                    "Runs of several seeds hold out different identities: they are grouped by held-out set, and "
                    "each setting gets mean ± sd over the sets and the number of sets where it was best.\n\n"
                    "examples:\n  distilswap compare runs/rw_product runs/rw_off --out runs/ablation\n"
                    "  distilswap compare runs/rw_*_s0 runs/rw_*_s1 runs/rw_*_s2 --out runs/ablation_3seeds",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("runs", nargs="+", help="distill run directories (each with eval.json)")
    compare.add_argument("--out", help="directory for compare.md and compare.png (default: print only)")
    compare.set_defaults(func=run_compare)


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def quality_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from distill.data import open_pairs
    from distill.quality import QualityConfig, save_quality, train_quality
    from facekit.errors import UserError
    from facekit.files import atomic_write_text

    if Path(args.out).suffix != ".safetensors":  # its report goes beside it, as .json
        raise UserError(f"--out {args.out}: name the model file .safetensors")
    config = QualityConfig(input_size=args.input_size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           val_fraction=args.val_fraction, seed=args.seed, stream=args.stream)
    pairs = open_pairs(args.pairs)
    model, report = train_quality(pairs, config, args.imagenet_weights, device=_device(args.device))
    path = save_quality(model, args.out, pairs.resolution, report)
    atomic_write_text(Path(path).with_suffix(".json"), json.dumps(report, indent=1))
    val = report["val"]
    print(f"{path}: val (held-out identities, {val['count']} pairs) MAE {val['mae']:.4f} "
          f"Spearman {val['spearman']:.3f}")
    return 0


def quality_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distill.data import open_pairs
    from distill.quality import evaluate_fit, load_quality, score_pairs
    from distill.reweight import SCORES_FILENAME, save_histogram, write_scores
    from facekit.shipped import file_sha256

    pairs = open_pairs(args.pairs)
    model = load_quality(args.model, pairs.resolution)
    scores = score_pairs(pairs, model.to(_device(args.device)), args.combination)
    out = Path(args.out) if args.out else Path(args.pairs) / SCORES_FILENAME
    fit = evaluate_fit(scores["quality"], pairs.fractions)
    meta = {"quality_model": str(args.model), "quality_sha256": file_sha256(args.model),
            "combination": args.combination, "pairs": len(pairs), "pairs_fingerprint": pairs.fingerprint,
            "spearman_all_pairs": fit["spearman"]}
    write_scores(out, pairs.pair_ids, {k: v.tolist() for k, v in scores.items()}, meta)
    histogram = Path(args.histogram) if args.histogram else out.with_name(out.stem + "_a.png")
    save_histogram(scores["a"], histogram, f"a ({args.combination}) over {len(pairs)} pairs")
    a = scores["a"]
    print(f"{out}: {len(pairs)} pairs scored; a min {a.min():.3f} max {a.max():.3f}; "
          f"Q Spearman with the true fraction {fit['spearman']:.3f}; histogram {histogram}")
    return 0


def run_distill(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distill.data import open_pairs
    from distill.evaluate import format_table
    from distill.reweight import SCORES_FILENAME, check_scores_match, read_scores
    from distill.train import distill, load_distill_config
    from facekit.experts.expert_loader import load_embedder, load_expert_set

    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "width": args.width,
                 "seed": args.seed, "reweight": args.reweight, "stream": args.stream}
    config = load_distill_config(args.config, overrides)
    pairs = open_pairs(args.pairs)
    scores, source = None, ""
    if config.reweight != "off":
        source = args.scores or str(Path(args.pairs) / SCORES_FILENAME)
        scores, meta = read_scores(source)
        check_scores_match(meta, pairs.fingerprint, source, config.reweight)
    embedder, parser, _ = load_expert_set(args.experts, args.arcface, args.parser)
    if args.no_parser:
        parser = None
    judge = load_embedder(args.judge) if args.judge else None
    result = distill(pairs, embedder, parser, config, args.out, scores, source, args.init,
                     args.vgg_weights, args.device, judge=judge, judge_name=args.judge or "")
    if result:
        print(format_table(result))
        print(f"\nstudent: {Path(args.out) / 'student.safetensors'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distill.compare import read_runs, report, save_chart, series
    from facekit.files import atomic_write_text

    splits = read_runs(args.runs)
    table = report(splits)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compare.md", table)
        print(f"chart: {save_chart(series(splits), out / 'compare.png')}")
    return 0
