"""The README's picture: the demo's model on a frame of the world's val split, six cameras and the BEV
with predicted and true boxes (`perception predict`'s drawing), written as a JPEG for the repository.

    make demo                        # trains the model this draws
    python -m bench.picture          # -> bench/results/demo_frame.jpg

``--checkpoint`` and ``--data`` point at any other run and dataset.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2

from perception.errors import BevStackError, one_line
from perception.predict import predict

DEMO_CHECKPOINT = Path("demo_out/loop/seed0/mined/round1/train/last.pt")  # the demo's model after mining
DEMO_DATA = Path("demo_out/world")
OUT = Path(__file__).parent / "results" / "demo_frame.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DEMO_DATA)
    parser.add_argument("--scene", default=None, help="Scene name (default: the first of the val split).")
    parser.add_argument("--frame", type=int, default=4, help="Frame of the scene to draw (0 first).")
    parser.add_argument("--width", type=int, default=1600, help="Width of the JPEG in pixels.")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: no checkpoint (run `make demo` first, or pass --checkpoint)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            drawn = predict(args.checkpoint, args.data, tmp, args.scene, max_frames=args.frame + 1, device="cpu")
            picture = cv2.imread(str(drawn.frames[min(args.frame, len(drawn.frames) - 1)]))
    except (BevStackError, OSError) as exc:
        raise SystemExit(f"error: {one_line(exc)}") from None
    scale = args.width / picture.shape[1]
    picture = cv2.resize(picture, (args.width, round(picture.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), picture, [cv2.IMWRITE_JPEG_QUALITY, 85]):
        raise SystemExit(f"{args.out}: cannot write the picture")
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]}) from {args.checkpoint} on {drawn.scene}")


if __name__ == "__main__":
    main()
