"""Overlay PNG encoding: medrobust's `service.overlay.to_png` against Pillow's PNG writer.

    python -m bench.overlay [--seconds 1.0]

Every predict with Grad-CAM answers a PNG at the upload's size (two for attentive models), so the
encoder is on every request's path. Side by side, for the same blended overlay: Pillow at
`compress_level=1` (its fastest deflate; Pillow still tries all five PNG filters on every row) and
`to_png` (libpng through imagecodecs: level 1, RLE, the Sub filter). Both are timed alternately,
one call each in turn. The images are real uploads from `../shared/data` when it is there (a
PneumoniaMNIST X-ray at 64 px, a HAM10000 photo at 224 px, a full-size Kaggle DR fundus photo),
else synthetic-set images (labelled so), plus random pixels at 64 px (what `bench.serving` uploads,
the worst case for any PNG codec). Prints a table, then one JSON line with the speed-ups.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _cases() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB upload) pairs: real images where available, synthetic stand-ins otherwise."""
    from PIL import Image

    from training.contract.imaging import decode_image_file

    rng = np.random.default_rng(0)
    cases = [("random pixels 64x64", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))]
    medmnist = SHARED_DATA / "medmnist" / "pneumoniamnist.npz"
    ham = sorted((SHARED_DATA / "ham10000" / "images").glob("*.jpg"))[:1]
    fundus = sorted((SHARED_DATA / "kaggle_dr" / "train").glob("*.jpeg"))[:1]
    if medmnist.exists() and ham and fundus:
        with np.load(medmnist) as data:
            xray = Image.fromarray(data["test_images"][0]).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
        cases += [
            ("PneumoniaMNIST X-ray 64x64", np.asarray(xray)),
            (f"HAM10000 {ham[0].name}", decode_image_file(ham[0])),
            (f"Kaggle DR {fundus[0].name}", decode_image_file(fundus[0])),
        ]
    else:
        from training.synthetic import synthetic_images

        lesion = synthetic_images(np.array([1]), rng)[0]
        cases += [
            ("synthetic lesion 64x64", lesion),
            ("synthetic lesion upscaled 600x450",
             np.asarray(Image.fromarray(lesion).resize((600, 450), Image.Resampling.BILINEAR))),
        ]
    return cases


def _pillow_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _alternate(a: Callable[[], bytes], b: Callable[[], bytes], seconds: float) -> tuple[float, float]:
    """Median seconds of `a()` and `b()`, called in turn until both have had about `seconds`."""
    ta: list[float] = []
    tb: list[float] = []
    while len(ta) < 3 or (sum(ta) + sum(tb) < 2 * seconds and len(ta) < 10_000):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return float(np.median(ta)), float(np.median(tb))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overlay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per encoder per image")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds: expected a positive number, got {args.seconds}")

    from service.overlay import blend, to_png

    heat = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs", file=sys.stderr)
    print(f"{'overlay of':<36}{'size':>11}{'Pillow ms':>11}{'medrobust ms':>14}{'speed-up':>10}{'Pillow KB':>11}{'medrobust KB':>14}")
    results = []
    for name, upload in _cases():
        overlay = blend(upload, heat)
        pillow_s, ours_s = _alternate(lambda o=overlay: _pillow_png(o), lambda o=overlay: to_png(o), args.seconds)
        pillow_kb, ours_kb = len(_pillow_png(overlay)) / 1000, len(to_png(overlay)) / 1000
        size = f"{overlay.shape[1]}x{overlay.shape[0]}"
        print(f"{name:<36}{size:>11}{pillow_s * 1000:>11.2f}{ours_s * 1000:>14.2f}{pillow_s / ours_s:>9.1f}x"
              f"{pillow_kb:>11.1f}{ours_kb:>14.1f}")
        # Four significant figures: a tiny image's encode takes microseconds, which three decimals of
        # a millisecond would round by several per cent.
        results.append({"image": name, "size": size, "pillow_ms": float(f"{pillow_s * 1000:.4g}"),
                        "medrobust_ms": float(f"{ours_s * 1000:.4g}"), "speedup": round(pillow_s / ours_s, 2),
                        "bytes_ratio": round(ours_kb / pillow_kb, 2)})
    print(json.dumps({"overlay_png": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
