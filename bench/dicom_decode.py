"""What the decode's second wall costs an upload: compressed DICOM decoded in-process and confined.

    python -m bench.dicom_decode [--repeats 15]

An uploaded DICOM with compressed pixel data is decoded in a child process under a memory
ceiling and a time limit (`training.contract.confined`), behind the codestream size check. This
times, per file, the front end's whole decode of an upload (`decode_upload`: parse, checks, decode,
grey levels, model input and display copy) both ways, side by side: **in-process** (the decoder
called directly, as training reads its own files) and **confined** (as the front end does). Files:
pydicom's bundled JPEG 2000, JPEG extended and RLE examples, and a 2048 x 2048 lossless JPEG 2000
radiograph-sized frame made here. The median of `--repeats` runs after one warm-up (the
forkserver starts on the first confined decode of a process; its start is printed apart).
Prints a table, then one JSON line with each file's ratio and added milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _cases() -> list[tuple[str, bytes]]:
    import imagecodecs
    import numpy as np
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless

    from tests import dicom_files as files

    cases = []
    for name in ("MR_small_jp2klossless.dcm", "examples_jpeg2k.dcm", "JPGExtended.dcm", "SC_rgb_rle.dcm"):
        with open(get_testdata_file(name, download=False), "rb") as handle:
            cases.append((name, handle.read()))
    y, x = np.mgrid[0:2048, 0:2048]
    frame = imagecodecs.jpeg2k_encode(((x * 3 + y * 5) % 4096).astype(np.uint16), level=0, codecformat=imagecodecs.JPEG2K.CODEC.J2K)
    cases.append(("2048x2048 16-bit JPEG 2000", files.compressed(frame, JPEG2000Lossless, rows=2048, columns=2048, bits=16)))
    return cases


def _decode(data: bytes, confine: bool) -> None:
    from training.contract import dicom

    dicom.read_dicom(data, max_pixels=50_000_000, min_side=16, confine=confine)


def _median_ms(data: bytes, confine: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        _decode(data, confine)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def compare(repeats: int) -> dict:
    """Per case: median milliseconds in-process and confined, their ratio and the difference."""
    cases = _cases()
    started = time.perf_counter()
    _decode(cases[0][1], True)  # starts this process's forkserver
    forkserver_ms = (time.perf_counter() - started) * 1000
    rows = {}
    for name, data in cases:
        _decode(data, False)
        own, confined = _median_ms(data, False, repeats), _median_ms(data, True, repeats)
        rows[name] = {"in_process_ms": round(own, 1), "confined_ms": round(confined, 1),
                      "ratio": round(confined / own, 2), "added_ms": round(confined - own, 1)}
    return {"forkserver_start_ms": round(forkserver_ms), "cases": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed decodes per file and side (median reported)")
    args = parser.parse_args(argv)
    result = compare(args.repeats)
    print(f"first confined decode of the process (forkserver start): {result['forkserver_start_ms']} ms")
    print(f"{'file':32} {'in-process ms':>14} {'confined ms':>12} {'ratio':>6} {'added ms':>9}")
    for name, row in result["cases"].items():
        print(f"{name:32} {row['in_process_ms']:>14} {row['confined_ms']:>12} {row['ratio']:>6} {row['added_ms']:>9}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
