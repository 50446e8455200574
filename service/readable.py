"""Numbers as a person reads them on the pages and in the reports: durations in minutes and seconds,
epsilons also in grey levels (1/255).

Plain text, no Flask: the audit's report page uses the same wording as the Audits page. (Table
cells keep their numbers on one line by CSS, `white-space: nowrap`, not by invisible characters a
reader would copy.)
"""

from __future__ import annotations

import math


def duration_text(seconds: float | None) -> str:
    """1102.5 -> "18 min 22 s"; 7.25 -> "7.2 s"; 5400 -> "1 h 30 min"; None -> ""."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


def grey_levels(epsilon: float) -> str:
    """An L-infinity epsilon on pixels in [0, 1] in grey levels of an 8-bit image: 0.01 -> "2.55/255"."""
    return f"{epsilon * 255:.3g}/255"


def epsilon_text(epsilon: str | float) -> str:
    """An epsilon as written, with its grey levels: "0.01 (2.55/255)"."""
    return f"{epsilon} ({grey_levels(float(epsilon))})"
