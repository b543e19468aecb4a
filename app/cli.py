"""`distilswap swap`: the face-swap app on photos and videos."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    swap = subparsers.add_parser(
        "swap",
        help="swap a face into photos or videos with a student or an exported model",
        description="Detect, align, swap and paste back every face (or one) of a photo or video. The model is a "
        "student checkpoint (PyTorch), an exported .onnx (ONNX Runtime: check the phone artifact on a desktop) "
        "or an export folder. Videos keep their frame rate and audio; landmarks are smoothed over time.\n\n"
        "examples:\n"
        "  distilswap swap --model runs/student.safetensors --source me.jpg --embedder arcface.pdparams "
        "--target group.jpg --out out.png --compare\n"
        "  distilswap swap --model exports/me/swapper_me.onnx --target clip.mp4 --out clip_swapped.mp4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    swap.add_argument("--model", required=True, help="student .safetensors, exported .onnx, or export folder")
    swap.add_argument("--source", help="face photo or identity file (.npz/.safetensors); not needed for a baked .onnx")
    swap.add_argument("--embedder", help="identity embedder for a source photo: small-experts folder or ArcFace checkpoint")
    swap.add_argument("--target", required=True, help="photo or video to swap faces in")
    swap.add_argument("--out", required=True, help="output photo (.png/.jpg) or video (.mp4)")
    swap.add_argument("--face-index", type=int, help="swap only this face (0 = largest); default: all faces")
    swap.add_argument("--models-dir", help="insightface model folder (SCRFD detector); default: offline dlib detector")
    swap.add_argument("--no-smooth", action="store_true", help="videos: no temporal landmark smoothing")
    swap.add_argument("--compare", action="store_true", help="photos: write source | target | result side by side")
    swap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    swap.set_defaults(func=_swap)


def _swap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from facekit.detect import make_detector
    from facekit.errors import UserError
    from facekit.identity import resolve_identity
    from facekit.imageio import IMAGE_SUFFIXES, read_image, write_image
    from facekit.video import VIDEO_SUFFIXES, iter_frames, video_info, write_video
    from app.swap import FaceSwapRun, open_swapper, side_by_side

    if Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out} already exists; pass --force to overwrite it")
    detector = make_detector(args.models_dir)
    identity = resolve_identity(args.source, args.embedder, detector=detector)[1:] if args.source else None
    run = FaceSwapRun(detector.detect, open_swapper(args.model, identity), face_index=args.face_index)
    target = Path(args.target)
    if target.suffix.lower() in VIDEO_SUFFIXES:
        info = video_info(target)
        run.smooth_rate = None if args.no_smooth else float(info.fps)
        swapped = tqdm(iter_frames(target), total=info.frames or None, unit="frame", desc="swap")
        write_video(args.out, (run(frame)[0] for frame in swapped), info.fps, audio_from=target)
    else:
        frame = read_image(target)
        result, count = run(frame)
        if count == 0:
            raise UserError(f"{target}: no face found to swap")
        if args.compare:
            shown = [read_image(args.source)] if args.source and Path(args.source).suffix.lower() in IMAGE_SUFFIXES else []
            result = side_by_side(*shown, frame, result)
        write_image(args.out, result)
    print(f"wrote {args.out}")
    return 0
