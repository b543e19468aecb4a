"""`distilswap experts train|show`: the small face experts trained on the synthetic world."""
from __future__ import annotations

import argparse
from pathlib import Path

RAW = argparse.RawDescriptionHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    experts = subparsers.add_parser(
        "experts", help="train/inspect the frozen face experts (identity, parser, gaze)",
        description="The face experts every stage leans on: identity embedder (IR-SE ArcFace), face parser "
        "(BiSeNet) and gaze estimator (EyeNet). Without official weights, small ones are trained on the "
        "synthetic world.")
    commands = experts.add_subparsers(dest="experts_command", metavar="ACTION", required=True)

    train = commands.add_parser(
        "train", help="train the small experts on the synthetic world (cached, resumable)", formatter_class=RAW,
        description="Train the three small experts on faces drawn on the fly, save NAME.safetensors + NAME.json "
        "per expert and a results table (results.json, results.md). An expert already trained with the same "
        "settings is reused; an interrupted run resumes from its last partial checkpoint.\n"
        "Presets: demo (embedder + parser, ~2 min on 2 idle CPU cores), full (all three, ~1.5 h on 2 cores), tiny "
        "(seconds, for tests).\n"
        "Examples:\n"
        "  distilswap experts train --world synthetic --out runs/experts\n"
        "  distilswap experts train --world synthetic --out runs/experts_full --preset full\n"
        "  distilswap experts train --world synthetic --out runs/experts --only parser --config my.yaml\n"
        "YAML overrides nest like the preset: {seed: 1, embedder: {steps: 300}, gaze: {steps: 0}}.")
    train.add_argument("--world", default="synthetic", choices=["synthetic"],
                       help="where the training faces come from (only the synthetic world: real-data experts "
                       "are the official checkpoints)")
    train.add_argument("--out", required=True, help="directory for the experts (created if missing)")
    train.add_argument("--preset", default="demo", help="demo | full | tiny (default demo)")
    train.add_argument("--config", help="YAML of overrides on top of the preset")
    train.add_argument("--only", nargs="+", choices=["embedder", "parser", "gaze"],
                       help="train only these experts (default: all three)")
    train.add_argument("--seed", type=int, help="world seed (identities, faces, initialisation)")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_experts_train)

    show = commands.add_parser("show", help="print the scores of trained experts",
                               description="Print the results table of an experts directory.")
    show.add_argument("directory")
    show.set_defaults(func=_experts_show)


def _experts_train(args: argparse.Namespace) -> int:
    import torch

    from experts.train import EXPERTS, make_config, results_table, train_experts

    overrides = {}
    if args.config:
        from facekit.config import read_yaml_mapping

        overrides = read_yaml_mapping(args.config, "experts settings")
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = make_config(args.preset, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = tuple(e for e in EXPERTS if e in (args.only or EXPERTS))
    results = train_experts(args.out, config, chosen, progress=not args.quiet)
    print(results_table(results))
    print(f"experts in {args.out} (results.md, results.json)")
    return 0


def _experts_show(args: argparse.Namespace) -> int:
    from facekit.errors import UserError
    from facekit.experts.expert_loader import read_record
    from experts.train import EXPERTS, results_table

    directory = Path(args.directory)
    records = {e: read_record(directory, e) for e in EXPERTS if (directory / f"{e}.json").exists()}
    if not records:
        raise UserError(f"no trained experts in {directory}: run `distilswap experts train --world synthetic --out {directory}`")
    print(results_table(records))
    return 0
