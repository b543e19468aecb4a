"""`distilswap world render|dataset|sheet|bench` (the synthetic face world), `distilswap faces` (a data set from
photos) and `distilswap identity` (a source identity file)."""
from __future__ import annotations

import argparse
from pathlib import Path

RAW = argparse.RawDescriptionHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_world(subparsers)
    _register_faces(subparsers)
    _register_identity(subparsers)


def _register_world(subparsers: argparse._SubParsersAction) -> None:
    world = subparsers.add_parser(
        "world", help="the synthetic face world: previews, data sets, swap contact sheets",
        description="Procedural faces with known identity, pose, expression, gaze and context: every face "
        "swap has an exact answer (the source's identity drawn with the target's attributes and context).")
    commands = world.add_subparsers(dest="world_command", metavar="ACTION", required=True)

    render = commands.add_parser(
        "render", help="a grid of random faces (and their label maps) as a PNG", formatter_class=RAW,
        description="Example:\n  distilswap world render --out faces.png --count 16 --size 128 --labels")
    render.add_argument("--out", required=True, help="PNG file")
    render.add_argument("--count", type=int, default=16)
    render.add_argument("--size", type=int, default=128)
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--labels", action="store_true", help="add a row of colour-coded BiSeNet label maps")
    render.set_defaults(func=_world_render)

    dataset = commands.add_parser(
        "dataset", help="write a data set in the shared folder format (train/test split by identity)",
        formatter_class=RAW,
        description="Images, label maps, landmarks, gaze and all parameters, readable by "
        "facekit.world.folder_dataset.FolderDataset like real data. Same settings -> same bytes; an interrupted "
        "write resumes. Example:\n"
        "  distilswap world dataset --out data/synthetic --identities 200 --per-identity 10 --size 128")
    dataset.add_argument("--out", required=True, help="data set directory")
    dataset.add_argument("--identities", type=int, default=200)
    dataset.add_argument("--per-identity", type=int, default=10, dest="per_identity")
    dataset.add_argument("--size", type=int, default=128)
    dataset.add_argument("--test-fraction", type=float, default=0.2, dest="test_fraction",
                         help="fraction of identities held out as the test split")
    dataset.add_argument("--seed", type=int, default=0)
    dataset.set_defaults(func=_world_dataset)

    sheet = commands.add_parser(
        "sheet", help="contact sheet: sources x targets with the ground-truth swaps (PNG)", formatter_class=RAW,
        description="Top row: targets; left column: sources (frontal); cell (i, j): the true swap of source i "
        "onto target j. Example:\n  distilswap world sheet --out sheet.png --sources 4 --targets 6")
    sheet.add_argument("--out", required=True, help="PNG file")
    sheet.add_argument("--sources", type=int, default=4)
    sheet.add_argument("--targets", type=int, default=6)
    sheet.add_argument("--size", type=int, default=128)
    sheet.add_argument("--seed", type=int, default=0)
    sheet.set_defaults(func=_world_sheet)

    bench = commands.add_parser("bench", help="rendering speed (faces/s on one CPU thread)",
                                description="Example:\n  distilswap world bench --size 128", formatter_class=RAW)
    bench.add_argument("--size", type=int, default=128)
    bench.add_argument("--count", type=int, default=2048, help="faces to render (after one warm-up batch)")
    bench.add_argument("--batch-size", type=int, default=64, dest="batch_size")
    bench.set_defaults(func=_world_bench)


def _register_faces(subparsers: argparse._SubParsersAction) -> None:
    faces = subparsers.add_parser(
        "faces", help="a face data set from a folder of photos (detect, align, crop, split by identity)",
        formatter_class=RAW,
        description="Turn photos into the data set format the synthetic world also writes, for `teacher train "
        "--data`, `pairs generate --data`, `identity --dataset` and int8 calibration. Identities: "
        "<identity>/*.jpg folders (VGGFace2-style) or one identity per file (flat, FFHQ-style). The largest face "
        "of each photo is detected and aligned; photos without a usable face are listed in OUT/bad_files.txt. "
        "An interrupted run resumes. Examples:\n"
        "  distilswap faces --photos data/ffhq --out data/ffhq256 --resolution 256 --aligned\n"
        "  distilswap faces --photos data/vggface2 --out data/vgg224 --resolution 224 --style arcface")
    faces.add_argument("--photos", required=True, help="folder of photos (searched recursively)")
    faces.add_argument("--out", required=True, help="data set directory to write (or resume)")
    faces.add_argument("--resolution", type=int, default=256, help="crop size in pixels (default 256)")
    faces.add_argument("--aligned", action="store_true",
                       help="the photos are already aligned crops (FFHQ): resize only, no detection")
    faces.add_argument("--style", choices=("ffhq", "arcface"), default="ffhq",
                       help="alignment template: ffhq (the teacher's, default) or arcface (the student's crops)")
    faces.add_argument("--test-fraction", type=float, default=0.05, dest="test_fraction",
                       help="fraction of identities held out as the test split (default 0.05)")
    faces.set_defaults(func=_faces)


def _register_identity(subparsers: argparse._SubParsersAction) -> None:
    identity = subparsers.add_parser(
        "identity",
        help="write a source identity file (embedding + 7x7 map) from a photo or a data set sample",
        description="Run the identity embedder D_I once and keep its two outputs in an .npz, the --source of "
        "`export`, `bench` and `swap`. Examples:\n"
        "  distilswap identity --image me.jpg --embedder checkpoints/arcface.pdparams --out ids/me.npz\n"
        "  distilswap identity --dataset runs/world --sample 0 --embedder runs/experts --out ids/s0.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = identity.add_mutually_exclusive_group(required=True)
    where.add_argument("--image", help="a photo; the largest face is used")
    where.add_argument("--dataset", help="a distilswap-faces data set (its landmarks are used; no detector)")
    identity.add_argument("--sample", type=int, default=0, help="sample index in --dataset (default 0)")
    identity.add_argument("--embedder", required=True, help="small-experts folder, ArcFace checkpoint or ArcFace ONNX")
    identity.add_argument("--detector-models", help="insightface model folder (default: offline dlib detector)")
    identity.add_argument("--out", required=True, help="identity file to write (.npz)")
    identity.add_argument("--force", action="store_true", help="replace an existing --out")
    identity.set_defaults(func=_identity)


def _check_size(size: int, flag: str = "--size") -> None:
    from facekit.errors import UserError

    if not 32 <= size <= 512:
        raise UserError(f"{flag} {size} is out of range; use 32..512 (64..256 is typical)")


def _check_count(name: str, value: int, low: int = 1) -> None:
    from facekit.errors import UserError

    if value < low:
        raise UserError(f"{name} must be at least {low}, got {value}")


def _png_path(out: str) -> Path:
    from facekit.errors import UserError

    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {out}: give a .png file name")
    return path


def _world_render(args: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import make_grid

    from facekit.world import synthetic
    from facekit.world.synthetic_dataset import colorize, save_image

    _check_size(args.size)
    _check_count("--count", args.count)
    path = _png_path(args.out)
    people = synthetic.sample_identities(args.count, args.seed)
    contexts = synthetic.match_neck(synthetic.sample_contexts(args.count, args.seed + 2), people)
    out = synthetic.render_batch(people, synthetic.sample_attributes(args.count, args.seed + 1), contexts, args.size)
    tiles = out["image"]
    rows = max(1, round(args.count**0.5))
    if args.labels:
        tiles = torch.cat([tiles, colorize(out["labels"])])
        rows = args.count
    save_image(make_grid(tiles, nrow=rows, padding=2, pad_value=1.0), path)
    print(f"wrote {path}")
    return 0


def _world_dataset(args: argparse.Namespace) -> int:
    from facekit.world.synthetic_dataset import WorldConfig, write_dataset

    config = WorldConfig(seed=args.seed, identities=args.identities, per_identity=args.per_identity, size=args.size,
                         test_fraction=args.test_fraction)
    root = write_dataset(args.out, config)
    print(f"{config.num_samples} faces of {config.identities} identities in {root} "
          f"({len(config.test_identities())} identities in the test split)")
    return 0


def _world_sheet(args: argparse.Namespace) -> int:
    from facekit.world.synthetic_dataset import contact_sheet, save_image

    _check_size(args.size)
    _check_count("--sources", args.sources)
    _check_count("--targets", args.targets)
    path = save_image(contact_sheet(args.sources, args.targets, args.size, args.seed), _png_path(args.out))
    print(f"wrote {path}: {args.sources} sources x {args.targets} targets with ground-truth swaps")
    return 0


def _world_bench(args: argparse.Namespace) -> int:
    import time

    from facekit.world import synthetic

    _check_size(args.size)
    _check_count("--batch-size", args.batch_size)
    n = args.batch_size
    params = (synthetic.sample_identities(n, 0), synthetic.sample_attributes(n, 1), synthetic.sample_contexts(n, 2))
    synthetic.render_batch(*params, size=args.size)  # warm-up
    batches = max(1, args.count // n)
    start = time.perf_counter()
    for _ in range(batches):
        synthetic.render_batch(*params, size=args.size)
    rate = batches * n / (time.perf_counter() - start)
    print(f"{rate:.0f} faces/s at {args.size}x{args.size} on one CPU thread (batches of {n}, labels and landmarks included)")
    return 0


def _identity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facekit.errors import UserError
    from facekit.identity import identity_from_image, resolve_identity, save_identity

    if Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out} already exists; pass --force to replace it or choose another --out")
    if args.image:
        _, embedding, feature_map = resolve_identity(args.image, args.embedder, args.detector_models)
    else:
        from facekit.faces.detect import Face
        from facekit.world.folder_dataset import FolderDataset

        dataset = FolderDataset(args.dataset)
        if not 0 <= args.sample < len(dataset):
            raise UserError(f"--sample {args.sample}: {args.dataset} has {len(dataset)} samples")
        item = dataset[args.sample]
        if item.get("landmarks5") is None:
            raise UserError(f"{args.dataset}: sample {args.sample} has no landmarks5; use --image on the photo")
        image = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        known = Face(bbox=None, score=1.0, landmarks5=item["landmarks5"].numpy())
        embedding, feature_map = identity_from_image(image, _KnownFaces([known]), args.embedder)
    save_identity(args.out, embedding, feature_map)
    print(f"wrote {args.out}")
    return 0


def _faces(args: argparse.Namespace) -> int:
    from facekit.errors import UserError
    from facekit.world.folder_dataset import FolderDataset

    _check_size(args.resolution, "--resolution")
    if not Path(args.photos).is_dir():
        raise UserError(f"--photos {args.photos}: no such folder")
    if not 0 <= args.test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    dataset = FolderDataset.from_images(args.photos, args.out, resolution=args.resolution, aligned=args.aligned,
                                        style=args.style, test_fraction=args.test_fraction)
    test = sum(record.get("split", "train") == "test" for record in dataset.records)
    print(f"wrote {args.out}: {len(dataset.records)} faces of {len(set(dataset.identities))} identities "
          f"({test} in the test split)")
    return 0


class _KnownFaces:
    """A 'detector' that returns faces whose landmarks are already known (aligned data sets)."""

    def __init__(self, faces: list) -> None:
        self.faces = faces

    def detect(self, image) -> list:
        return self.faces
