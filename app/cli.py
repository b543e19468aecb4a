"""`distilswap swap`: the face-swap app on photos and videos."""
from __future__ import annotations

import argparse
import sys

from app.tracking import TrackerSettings
from facekit.onnx_runtime import ENGINES


def register(subparsers: argparse._SubParsersAction) -> None:
    swap = subparsers.add_parser(
        "swap",
        help="swap a face into photos or videos with a student or an exported model",
        description="Detect, align, swap and paste back every face (or one) of a photo or video. The model is a "
        "student checkpoint (PyTorch), an exported .onnx (ONNX Runtime: check the phone artifact on a desktop) "
        "or an export folder. Videos keep their frame rate and audio (phone videos are turned upright); faces are detected on key frames (every "
        "--detect-every frames, after scene cuts, when a track is lost) and tracked by their landmarks in "
        "between, smoothed over time; decoding, swapping and encoding overlap.\n\n"
        "examples:\n"
        "  distilswap swap --model runs/student.safetensors --source me.jpg --embedder arcface.pdparams "
        "--target group.jpg --out out.png --compare\n"
        "  distilswap swap --model exports/me/swapper_me.onnx --target clip.mp4 --out clip_swapped.mp4 --stats",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    swap.add_argument("--model", required=True, help="student .safetensors, exported .onnx, or export folder")
    swap.add_argument("--source", help="face photo or identity file (.npz/.safetensors); not needed for a baked .onnx")
    swap.add_argument("--embedder", help="identity embedder for a source photo: small-experts folder or ArcFace checkpoint")
    swap.add_argument("--target", required=True, help="photo or video to swap faces in")
    swap.add_argument("--out", required=True, help="output photo (.png/.jpg) or video (.mp4)")
    swap.add_argument("--face-index", type=int, help="swap only this face (0 = largest); default: all faces")
    swap.add_argument("--models-dir", help="insightface model folder (SCRFD detector); default: offline dlib detector")
    swap.add_argument("--onnx-emap", action="store_true",
                      help="a one-shot ONNX swapper (inputs target + source, e.g. inswapper_128): map the source "
                      "embedding by the file's last initializer (inswapper's emap)")
    swap.add_argument("--onnx-pixels", default="unit", choices=["unit", "imagenet", "signed"],
                      help="what a one-shot ONNX swapper's crop input holds: unit [0,1] (inswapper, default), imagenet (SimSwap as FaceFusion runs it), signed [-1,1] (GHOST)")
    swap.add_argument("--engine", default="onnxruntime", choices=ENGINES,
                      help="what runs an .onnx model: onnxruntime (the phone runtime's desktop build, default) or "
                      "openvino (faster on x86 CPUs; the same file: an fp32 swapper stays fp32, an _int8 file runs in int8). A student "
                      "checkpoint is baked and exported first for a video or for openvino, else run in PyTorch")
    swap.add_argument("--no-smooth", action="store_true", help="videos: no temporal landmark smoothing")
    swap.add_argument("--detect-every", type=int, default=TrackerSettings.every, metavar="N",
                      help="videos: detect faces every N frames and track them in between (1 = every frame; default %(default)s)")
    swap.add_argument("--detect-width", type=int, default=TrackerSettings.detect_width, metavar="PX",
                      help="videos: key frames are detected at this width; the offline detector misses faces narrower "
                      "than ~1/8 of it (default %(default)s)")
    swap.add_argument("--x264-preset", default="veryfast", metavar="NAME",
                      help="videos: x264 speed/size trade-off (ultrafast ... veryslow; default %(default)s)")
    swap.add_argument("--stats", action="store_true", help="videos: print the frame rate and the ms per frame of each stage")
    swap.add_argument("--compare", action="store_true", help="photos: write source | target | result side by side")
    swap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    swap.set_defaults(func=_swap)

    evaluate = subparsers.add_parser(
        "evaluate", help="score swappers on real faces with judges they never trained against",
        description="Swap every source with every target (photos, or --frames frames spread over each target video; "
        "or the rows of a --pairs CSV) with each --model and score the results: identity (dlib's 128-d face "
        "recognition ResNet: cosine to the source and to the target, top-1 retrieval of the source among all "
        "sources), pose and expression kept from the target (68 landmarks), background kept outside the target's "
        "face (L1, PSNR). Built-in models: `target` (no swap: the floor) and `paste` (the source's own face pasted "
        "on: the identity ceiling). Writes OUT/results.md, results.json, pairs.csv, sheet.png; per-pair results "
        "are cached, so a rerun resumes.\n\n"
        "example:\n  distilswap evaluate --model target --model paste --model runs/student/student.safetensors "
        "--embedder arcface.pdparams --sources photos/sources --targets photos/targets --out runs/eval_real",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--model", action="append", required=True,
                          help="`target`, `paste`, a student .safetensors, an export folder or a one-shot ONNX swapper "
                          "(e.g. inswapper_128.onnx with --onnx-emap); repeat to compare")
    evaluate.add_argument("--sources", help="folder of source photos")
    evaluate.add_argument("--targets", help="folder of target photos or videos")
    evaluate.add_argument("--pairs", help="CSV of source,target paths (relative to the CSV) instead of the folders")
    evaluate.add_argument("--frames", type=int, default=8, help="frames sampled evenly from each target video (default 8)")
    evaluate.add_argument("--temporal-frames", type=int, default=16,
                          help="target videos: consecutive frames (tracked) for landmark jitter and warp error (default 16)")
    evaluate.add_argument("--embedder", help="identity embedder the students read sources with (small-experts folder, "
                          "ArcFace checkpoint or ONNX)")
    evaluate.add_argument("--recognizer", action="append", default=[],
                          help="another identity judge (insightface ArcFace .onnx, IR-SE checkpoint, small-experts "
                          "folder): cosine and retrieval on aligned 112² crops; repeat for several")
    evaluate.add_argument("--onnx-emap", action="store_true",
                          help="one-shot ONNX swappers: map the source embedding by the file's emap (inswapper)")
    evaluate.add_argument("--onnx-pixels", default="unit", choices=["unit", "imagenet", "signed"],
                          help="what a one-shot ONNX swapper's crop input holds: unit [0,1] (inswapper, default), imagenet (SimSwap as FaceFusion runs it), signed [-1,1] (GHOST)")
    evaluate.add_argument("--engine", default="onnxruntime", choices=ENGINES,
                          help="what runs the .onnx models: onnxruntime (default) or openvino (as `swap --engine`)")
    evaluate.add_argument("--inception", help="torchvision Inception-v3 weights (.pth) on disk, for FID of each model's "
                          "face crops against the targets' (never downloaded; skipped without)")
    evaluate.add_argument("--models-dir", help="insightface model folder (SCRFD detector); default: offline dlib detector")
    evaluate.add_argument("--out", required=True, help="report folder")
    evaluate.set_defaults(func=_evaluate)


def _swap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facekit.faces.detect import make_detector
    from facekit.errors import UserError
    from facekit.identity import resolve_identity
    from facekit.faces.imageio import IMAGE_SUFFIXES, read_image, write_image
    from facekit.faces.video import VIDEO_SUFFIXES, X264_PRESETS
    from app.swap import FaceSwapRun, open_swapper, side_by_side

    if Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out} already exists; pass --force to overwrite it")
    if args.x264_preset not in X264_PRESETS:
        raise UserError(f"--x264-preset {args.x264_preset}: not one of {', '.join(X264_PRESETS)}")
    if args.face_index is not None and args.face_index < 0:
        raise UserError(f"--face-index {args.face_index}: faces are numbered from 0 (the largest)")
    if args.detect_every < 1 or args.detect_width < 32:
        raise UserError(f"--detect-every {args.detect_every} / --detect-width {args.detect_width}: need >= 1 and >= 32")
    detector = make_detector(args.models_dir)
    identity = resolve_identity(args.source, args.embedder, detector=detector)[1:] if args.source else None
    target = Path(args.target)
    video = target.suffix.lower() in VIDEO_SUFFIXES
    swapper = open_swapper(args.model, identity, threads=1 if video else 0, use_emap=args.onnx_emap,
                           pixels=args.onnx_pixels, engine=args.engine, as_onnx=video)
    if video:
        _swap_video(args, target, detector, swapper)
    else:
        frame = read_image(target)
        run = FaceSwapRun(detector.detect, swapper, face_index=args.face_index)
        result, count = run(frame)
        if count == 0 and run.found:
            raise UserError(f"--face-index {args.face_index}: {target} has {run.found} face(s), numbered from 0 (largest)")
        if count == 0:
            raise UserError(f"{target}: no face found to swap")
        if args.compare:
            shown = [read_image(args.source)] if args.source and Path(args.source).suffix.lower() in IMAGE_SUFFIXES else []
            result = side_by_side(*shown, frame, result)
        write_image(args.out, result)
    print(f"wrote {args.out}")
    return 0


# Decoding and encoding (x264 and its threads) run this much below the swap, the slowest stage, so that on a
# CPU with fewer cores than busy threads the swap keeps a core: on 2 cores, 720p went from 29.9 to 35.3 fps and
# 480p from 35.7 to 40.4 (means of three alternated runs; README).
BACKGROUND_NICENESS = 10


def _swap_video(args: argparse.Namespace, target, detector, swapper) -> None:
    """Decode, find and align the faces (track), swap and paste, and encode in four overlapping threads, the swap
    on this one. dlib's detector, OpenCV and both engines release the GIL, so on 2 cores tracking beside the swap
    pays (480p 54-56 -> 72-73 fps); it did not while the crops' float conversion ran in torch, whose idle
    OpenMP workers spun on the second core."""
    import copy

    from tqdm import tqdm

    from app.swap import FaceSwapRun
    from app.tracking import FaceTracker
    from facekit.faces.detect import DlibDetector, landmark_predictor
    from facekit.faces.video import consume_behind, iter_frames, read_ahead, video_info, write_video

    info = video_info(target)
    if isinstance(detector, DlibDetector):  # key frames are downscaled to --detect-width: no upsampling there
        detector = copy.copy(detector)
        detector.upsample = 0
    predictor = landmark_predictor(detector)
    tracker = FaceTracker(detector, predictor, TrackerSettings(every=args.detect_every, detect_width=args.detect_width))
    run = FaceSwapRun(tracker, swapper, face_index=args.face_index, smooth_rate=None if args.no_smooth else float(info.fps))
    frames = read_ahead(run.clock.timed(iter_frames(target), "decode"), niceness=BACKGROUND_NICENESS)
    prepared = read_ahead((run.prepare(frame) for frame in frames))
    swapped = (run.finish(faces) for faces in prepared)

    def encode(items):
        shown = tqdm(run.clock.timed(items, "encode: waiting"), total=info.frames or None, unit="frame", desc="swap")
        return write_video(args.out, shown, info.fps, audio_from=target, preset=args.x264_preset)

    with run.clock.stage("encode: total"):
        consume_behind(encode, swapped, niceness=BACKGROUND_NICENESS)
    stats = tracker.stats
    if args.stats:
        print(run.clock.table(stats.frames))
        print(f"  key frames {stats.key_frames} (scene cuts {stats.cuts}, lost tracks {stats.lost}); "
              f"faces in {stats.with_faces} of {stats.frames} frames")
    if stats.with_faces == 0:
        print(f"distilswap: warning: no face found in any of the {stats.frames} frames; {args.out} holds the video "
              "re-encoded, without swaps", file=sys.stderr)


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.evaluate import evaluate, list_pairs, model_swap, paste_source
    from facekit.faces.detect import make_detector
    from facekit.errors import UserError

    if args.frames < 1:
        raise UserError(f"--frames {args.frames}: need at least 1")
    detector = make_detector(args.models_dir)
    models = {}
    for name in args.model:
        if name == "target":
            models[name] = lambda source, source_face, target, target_face: target
        elif name == "paste":
            models[name] = paste_source
        else:
            models[name] = model_swap(name, args.embedder, detector, args.onnx_emap, args.onnx_pixels, args.engine)
    from facekit.experts.expert_loader import load_embedder

    recognizers = {Path(path).stem: load_embedder(path) for path in args.recognizer}
    inception = None
    if args.inception:
        from app.fid import InceptionFeatures

        inception = InceptionFeatures(args.inception)
    report = evaluate(models, list_pairs(args.sources, args.targets, args.pairs, args.frames), args.out, detector,
                      recognizers=recognizers, temporal_frames=args.temporal_frames, inception=inception,
                      engine=args.engine)
    print(open(f"{args.out}/results.md").read())
    if report["skipped"]:
        print(f"distilswap: warning: {len(report['skipped'])} pair(s) skipped, listed in {args.out}/results.md")
    return 0
