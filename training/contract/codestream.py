"""What a compressed DICOM frame's own codestream says it holds, read before anything decodes it.

A decoder sizes its output from the codestream's header (a JPEG SOF or JPEG-LS SOF55 marker, a
JPEG 2000 SIZ marker), not from the DICOM's Rows and Columns: a 650-byte file whose SIZ claims
40000 x 40000 makes openjpeg allocate gigabytes. These functions read those few header bytes only,
so the decode path can compare them with the header and the pixel limit first. An RLE frame's
output is sized from Rows and Columns by its decoder; what can disagree there is its segment count.

Nothing here decodes pixels or allocates in proportion to what a header claims.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.contract.image_errors import InvalidImage

# JPEG frame headers (ITU T.81 B.1.1.3): SOF0-3, 5-7, 9-11, 13-15; C4 (DHT), C8 (JPG) and CC (DAC)
# share the range but are not frames. F7 is JPEG-LS's SOF55 (ITU T.87 C.2.2), laid out the same.
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows
_SOI, _SOS, _EOI = 0xD8, 0xDA, 0xD9
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_RLE_HEADER = 64


@dataclass(frozen=True)
class Geometry:
    """A frame's size as its codestream declares it."""

    rows: int
    columns: int
    components: int


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big")


def jpeg_geometry(frame: bytes) -> Geometry:
    """The frame header of a JPEG or JPEG-LS codestream (the first SOFn or SOF55 before any scan)."""
    if frame[:2] != b"\xff\xd8":
        raise InvalidImage("expected a JPEG codestream starting with its SOI marker, got other bytes")
    at = 2
    while at + 4 <= len(frame):
        if frame[at] != 0xFF:
            raise InvalidImage(f"expected a JPEG marker at byte {at} of the frame, got other bytes")
        marker = frame[at + 1]
        if marker == 0xFF:  # fill bytes before a marker (T.81 B.1.1.2)
            at += 1
            continue
        if marker in _JPEG_STANDALONE:
            at += 2
            continue
        if marker in (_SOS, _EOI, _SOI):
            break
        length = _u16(frame, at + 2)
        if length < 2:
            raise InvalidImage(f"expected a JPEG segment length of at least 2, got {length}")
        if marker in _JPEG_FRAMES:
            if length < 8 or at + 2 + length > len(frame):
                raise InvalidImage("expected a whole JPEG frame header, got a truncated one")
            rows, columns, components = _u16(frame, at + 5), _u16(frame, at + 7), frame[at + 9]
            return Geometry(rows, columns, components)
        at += 2 + length
    raise InvalidImage("expected a JPEG frame header (SOF) before the first scan, got none")


def _j2k_codestream_start(frame: bytes) -> int:
    """Where the J2K codestream (SOC then SIZ) begins: at 0, or inside a JP2 file's jp2c box."""
    if frame.startswith(_J2K_SOC_SIZ):
        return 0
    if not frame.startswith(_JP2_SIGNATURE):
        raise InvalidImage("expected a JPEG 2000 codestream (SOC then SIZ) or a JP2 file, got other bytes")
    at = 0
    while at + 8 <= len(frame):
        length, kind = _u32(frame, at), frame[at + 4 : at + 8]
        header = 8
        if length == 1:  # the length is in the 8 bytes that follow the type
            if at + 16 > len(frame):
                break
            length, header = int.from_bytes(frame[at + 8 : at + 16], "big"), 16
        elif length == 0:  # the box runs to the end
            length = len(frame) - at
        if kind == b"jp2c":
            start = at + header
            if frame[start : start + 4] != _J2K_SOC_SIZ:
                break
            return start
        if length < header:
            break
        at += length
    raise InvalidImage("expected a JP2 file with a contiguous codestream box (jp2c), got none")


def j2k_geometry(frame: bytes) -> Geometry:
    """The image size of a JPEG 2000 codestream's SIZ marker (ITU T.800 A.5.1): reference grid less offsets."""
    start = _j2k_codestream_start(frame)
    siz = start + 4  # after SOC and the SIZ marker: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, tiles, Csiz
    if siz + 38 > len(frame):
        raise InvalidImage("expected a whole JPEG 2000 SIZ marker, got a truncated one")
    width, height = _u32(frame, siz + 4) - _u32(frame, siz + 12), _u32(frame, siz + 8) - _u32(frame, siz + 16)
    if width <= 0 or height <= 0:
        raise InvalidImage(f"expected a JPEG 2000 image area, got offsets beyond the grid ({width}x{height})")
    return Geometry(rows=height, columns=width, components=_u16(frame, siz + 36))


def rle_segments(frame: bytes) -> int:
    """The segment count of an RLE frame's header (PS3.5 G.5), its offsets checked to lie in the frame."""
    if len(frame) < _RLE_HEADER:
        raise InvalidImage(f"expected an RLE frame with its {_RLE_HEADER}-byte header, got {len(frame)} bytes")
    count = int.from_bytes(frame[:4], "little")
    if not 1 <= count <= 15:
        raise InvalidImage(f"expected 1 to 15 RLE segments, got {count}")
    offsets = [int.from_bytes(frame[4 + 4 * i : 8 + 4 * i], "little") for i in range(count)]
    if offsets[0] != _RLE_HEADER or any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(frame):
        raise InvalidImage("expected RLE segment offsets rising within the frame, got others")
    return count
