"""Memory the operator gives back to the system once a burst of passes is over (glibc only).

A thousand ProjectorSets starting at once parse thousands of API answers on several threads.
glibc keeps what Python frees in per-thread arenas, so the resident size after the burst stays
at its peak although the objects are gone. Fewer arenas fragment less, and ``malloc_trim``
returns the free pages once the operator is at rest. Elsewhere (musl, macOS) both do nothing.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _glibc()


def limit_arenas(count: int = ARENAS) -> None:
    """Call before threads start: later threads share ``count`` arenas instead of one each."""
    if _libc is not None:
        _libc.mallopt(M_ARENA_MAX, count)


def trim() -> None:
    if _libc is not None:
        _libc.malloc_trim(0)
