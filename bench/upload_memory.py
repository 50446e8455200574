"""Peak memory one upload costs the front end: the served path against full-size overlays.

    python -m bench.upload_memory [--side 7000]

Medical images reach the front end from outside, so what a single accepted upload can cost bounds
how many a pod survives at once. Each case is a file just under the pixel limit (a 16-bit grey
PNG of `--side` x `--side` pixels, a few hundred kB: the hardening issue's file; the same as 8-bit
RGBA; and a 12-megapixel JPEG photo). Each is measured in a fresh process that has already
answered one small upload (imports, colour maps and the overlay pool exist), as the peak resident
memory while answering it minus the resident memory before.

Side by side, per file:

- **served**: `service.explain.explain_upload`, as the API runs it: the decode (8-bit, a strip at a
  time), the model input resized from the full decode, overlays drawn on a copy capped at
  `OVERLAY_MAX_SIDE` on its long side.
- **full-size overlays**: the same decode, then both overlays drawn at the upload's own size, as
  the front end drew them before the cap.

The model's own call is a stand-in answering fixed maps: its memory does not depend on the
upload's size (the input is resized first). Prints a table, then one JSON line with each case's
peak growth, the ratio of the two sides and whether the goal (at most 600 MB per upload) is met.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_MB = 600
SIDES = ("served", "full-size overlays")


def _files(side: int, out: Path) -> dict[str, Path]:
    """The cases, written once by the parent so the measured process only reads bytes."""
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    grey16 = ((x + y) * (65535 // (2 * side))).astype(np.uint16)  # a smooth ramp: a small file
    rgba = np.dstack([(grey16 >> 8).astype(np.uint8)] * 3 + [np.full((side, side), 200, np.uint8)])
    photo = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    cases = {
        f"16-bit grey PNG {side}x{side}": (Image.fromarray(grey16), "PNG"),
        f"RGBA PNG {side}x{side}": (Image.fromarray(rgba), "PNG"),
        "JPEG photo 4000x3000": (Image.fromarray(photo), "JPEG"),
    }
    paths = {}
    for i, (name, (image, fmt)) in enumerate(cases.items()):
        paths[name] = out / f"case{i}.{fmt.lower()}"
        image.save(paths[name], fmt)
    return paths


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    # getrusage's maxrss survives exec (the spawning parent's peak would be read); the mm's own
    # high-water mark (VmHWM) does not, and writing 5 to clear_refs resets it to the current RSS.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _peak_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def measure(path: Path, side: str) -> dict[str, float]:
    """In this (fresh) process: one small upload, then `path`; peak growth in MB and seconds."""
    import threading

    from PIL import Image

    from service.explain import explain_upload
    from service.overlay import overlay_png
    from service.predictor import GradcamResult
    from training.contract.imaging import decode_upload

    class FixedMaps:
        def gradcam(self, model, images, *, version=None):
            maps = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
            return GradcamResult(model, 1, np.array([[0.3, 0.7]], np.float32), np.array([1]), maps, maps)

        def model_card(self, model, version=None):
            return card

    card = {"task": "bench", "class_names": ["a", "b"], "input_size": [64, 64, 3]}
    slots = threading.BoundedSemaphore(1)

    def served(data: bytes) -> None:
        explain_upload(FixedMaps(), "m", card, data, max_pixels=10**9, decode_slots=slots)

    def full_size(data: bytes) -> None:
        upload = decode_upload(data, size=64, max_pixels=10**9, display_side=10**9)
        maps = FixedMaps().gradcam("m", upload.model_input[None])
        overlay_png(upload.display, maps.heatmap[0]), overlay_png(upload.display, maps.attention_map[0], colormap="viridis")

    run = served if side == "served" else full_size
    small = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 60, 30)).save(small, "PNG")
    run(small.getvalue())  # warm: imports, colour maps, the overlay pool
    data = path.read_bytes()
    before = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    run(data)
    return {"peak_growth_mb": round(_peak_mb() - before, 1), "seconds": round(time.perf_counter() - start, 3)}


def _measure_in_child(path: Path, side: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.upload_memory", "--measure", str(path), side],
        capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {path.name} ({side}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(side_px: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="medrobust-bench-upload-") as tmp:
        cases = {}
        for name, path in _files(side_px, Path(tmp)).items():
            sides = {side: _measure_in_child(path, side) for side in SIDES}
            served, full = (sides[s]["peak_growth_mb"] for s in SIDES)
            cases[name] = {
                "file_bytes": path.stat().st_size,
                "sides": sides,
                "ratio_full_over_served": round(full / served, 2) if served > 0 else None,
            }
    worst = max(c["sides"]["served"]["peak_growth_mb"] for c in cases.values())
    return {"cases": cases, "goal_mb": GOAL_MB, "worst_served_mb": worst, "goal_met": worst <= GOAL_MB,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def table(result: dict) -> str:
    rows = [f"{'upload':<30} {'file':>9} {'served MB':>10} {'full-size MB':>13} {'ratio':>6} {'served s':>9}"]
    for name, case in result["cases"].items():
        served, full = (case["sides"][s] for s in SIDES)
        rows.append(
            f"{name:<30} {case['file_bytes'] / 1000:>7.0f}kB {served['peak_growth_mb']:>10.0f} "
            f"{full['peak_growth_mb']:>13.0f} {case['ratio_full_over_served'] or float('nan'):>5.2f}x {served['seconds']:>9.2f}"
        )
    verdict = "met" if result["goal_met"] else "NOT met"
    rows.append(f"goal: at most {result['goal_mb']} MB of peak growth per accepted upload: {verdict} "
                f"(worst {result['worst_served_mb']:.0f} MB); load average {result['load_average']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upload_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=7000, help="side of the square PNG cases (default 7000: 49 MP)")
    parser.add_argument("--measure", nargs=2, metavar=("FILE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        path, side = args.measure
        print(json.dumps(measure(Path(path), side)))
        return 0
    if args.side < 8:
        parser.error(f"--side: expected at least 8, got {args.side}")
    result = run(args.side)
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
