"""Ctrl-C that always reaches a fit, even when it lands in a garbage-collector callback.

CPython runs a signal's Python handler at the next bytecode of the main thread. When that is
inside a `gc.callbacks` function (JAX registers one, `_xla_gc_callback`, which runs at every
collection), the `KeyboardInterrupt` the default handler raises is printed as "Exception
ignored in ..." and dropped: the command went on fitting as if Ctrl-C had never been pressed
(seen as a full fit and exit 0 after an interrupt ~1 s into `ngvi fit` on a loaded machine).
"""

import _thread
import contextlib
import gc
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_REDELIVERY_DELAY_S = 0.01


def _in_gc_callback(frame: FrameType | None) -> bool:
    """Whether `frame` or one of its callers runs a function registered in `gc.callbacks`."""
    codes = set()
    for callback in list(gc.callbacks):
        code = getattr(getattr(callback, "__func__", callback), "__code__", None)
        if code is not None:
            codes.add(code)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """`signal.default_int_handler`, except inside a gc callback: there the interrupt is
    delivered again shortly after (`_thread.interrupt_main` from a timer thread), when the
    main thread has left the callback."""
    if _in_gc_callback(frame):
        timer = threading.Timer(_REDELIVERY_DELAY_S, _thread.interrupt_main, (signum,))
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def deliverable_interrupts() -> Iterator[None]:
    """Within the block, SIGINT raises `KeyboardInterrupt` as usual but is never lost in a
    garbage-collector callback. Only on the main thread and only over Python's default
    handler (a handler the caller installed is left alone); the previous handler is
    restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
