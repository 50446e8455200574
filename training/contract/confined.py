"""One call in a child process under a memory ceiling and a time limit: codecs' defence in depth.

The compressed-DICOM decoders (openjpeg, libjpeg, CharLS) are C libraries that size their
buffers from the codestream. :mod:`training.contract.codestream` checks those sizes before a
decode; this module is the second wall, for whatever that check cannot foresee. The call runs in a
process forked from a forkserver (started on first use, holding none of the caller's threads or
models) with ``RLIMIT_AS`` raised only ``memory_bytes`` above what the child had at start, and is
killed when ``seconds`` run out. A child that dies of either is an image refused, not a worker
lost.

Nothing is started at import; each process (each gunicorn worker) starts its own forkserver the
first time it needs one.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import resource
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from training.contract.image_errors import ImageTooLarge, InvalidImage

# Imported once by the forkserver, so a child starts with pydicom and the codecs loaded (about 0.4 s
# each otherwise). Modules that are not installed are skipped by the forkserver.
_PRELOAD = [
    "numpy", "pydicom", "pydicom.pixels", "pydicom.pixels.decoders.pylibjpeg", "openjpeg", "libjpeg", "rle",
    "training.contract.dicom",
]


@dataclass(frozen=True)
class Limits:
    """How much the confined call may add to the child's address space, and for how long it may run."""

    memory_bytes: int
    seconds: float


class _Outgrown(Exception):
    """Raised in the child when the call hits the memory ceiling."""


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    return pages * resource.getpagesize()


def _child(connection: Connection, limit: int, call: Callable[..., Any], args: tuple[Any, ...]) -> None:
    ceiling = _address_space() + limit
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    try:
        outcome: tuple[str, Any] = ("ok", call(*args))
    except MemoryError:
        outcome = ("memory", None)
    except BaseException as exc:  # handed back as it is: the caller's own errors keep their meaning
        outcome = ("error", exc)
    try:
        connection.send(outcome)
    except MemoryError:  # even the answer does not fit under the ceiling
        connection.send(("memory", None))
    except Exception:  # an exception that does not pickle: its type is enough
        connection.send(("error", RuntimeError(type(outcome[1]).__name__)))
    finally:
        connection.close()


def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def run_confined(call: Callable[..., Any], *args: Any, limits: Limits, what: str) -> Any:
    """``call(*args)`` in a child under `limits`; its result, or its exception re-raised here.

    `call` and its arguments must pickle (a module-level function). Outgrowing the memory raises
    ImageTooLarge (413); running out of time, or the child dying otherwise, raises InvalidImage.
    """
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(sender, limits.memory_bytes, call, args), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(limits.seconds):
            raise InvalidImage(f"expected {what} to finish within {limits.seconds:g} s, got one still running; it was stopped")
        try:
            status, value = receiver.recv()
        except EOFError:  # the child died without answering (killed by the kernel, a crash in a codec)
            raise ImageTooLarge(
                f"expected {what} within {limits.memory_bytes / 2**20:,.0f} MiB, got one whose decoder died"
            ) from None
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    if status == "memory":
        raise ImageTooLarge(f"expected {what} within {limits.memory_bytes / 2**20:,.0f} MiB, got one that needed more")
    if status == "error":
        raise value
    return value
