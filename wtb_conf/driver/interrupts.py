"""Ctrl-C and SIGTERM for `python -m wtb_conf`: both raise KeyboardInterrupt, wherever they
land, so that one path (wtb_conf.driver.callback.main) ends the sweep, and they reach it even
when the
first one is swallowed. Installed before the heavy imports; imports nothing heavy itself."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

signalled: str | None = None  # the first SIGINT/SIGTERM this process got


def install() -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted:
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    signal.signal(signal.SIGALRM, _again)
    sys.unraisablehook = _unraisable
    for pool in ("QueuePool", "NullPool", "StaticPool", "SingletonThreadPool"):
        logging.getLogger(f"sqlalchemy.pool.impl.{pool}").addFilter(_not_an_interrupt)


def interrupted() -> bool:
    """Whether this process got a SIGINT or SIGTERM."""
    return signalled is not None


def taken() -> None:
    """The interrupt reached its handler: stop raising it again."""
    signal.setitimer(signal.ITIMER_REAL, 0)


def ignore() -> None:
    """From here on the process is on its way out: a second Ctrl-C or SIGTERM changes
    nothing (what is left to do is bounded)."""
    taken()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


_holding = 0  # depth of held() blocks: an interrupt then only notes itself


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done: what it writes is written whole.
    (Not a signal mask: a signal the main thread blocks goes to another thread, and Python
    runs its handler in the main thread all the same.)"""
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
    if _holding == 0 and signalled is not None and _pending:
        _pending.clear()
        raise KeyboardInterrupt(signalled)


_pending: list[str] = []  # an interrupt that came during held()


def _interrupted(signum: int, frame: Any) -> None:
    global signalled
    signalled = signalled or signal.Signals(signum).name
    # Raised again every 0.5 s until main() takes it: an exception raised in a GC callback
    # (SQLAlchemy's weakref callbacks, say) is printed as "ignored" and the sweep went on
    signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    _raise_unless_in_omegaconf(frame)


def _again(signum: int, frame: Any) -> None:
    handling = sys.exc_info()[0]
    if handling is None or not issubclass(handling, KeyboardInterrupt):  # it was swallowed
        _raise_unless_in_omegaconf(frame)


def _raise_unless_in_omegaconf(frame: Any) -> None:
    """Raise the interrupt here, unless a held() block is running (it raises it when done)
    or OmegaConf is: its nodes are not safe to interrupt, an exception in the middle of
    setting one leaves it half-linked, and the error that then raises (from its own
    `finally`) takes the interrupt's place. Inside it, the interrupt comes back in 20 ms."""
    if _holding:
        _pending.append(signalled or "SIGINT")
        return
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("omegaconf."):
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.5)
            return
        frame = frame.f_back
    raise KeyboardInterrupt(signalled)


def _unraisable(unraisable: Any, default: Callable[[Any], None] = sys.unraisablehook) -> None:
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):  # that one comes back (_again)
        default(unraisable)


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    """SQLAlchemy's pool logs (with its traceback) a Ctrl-C that lands while it closes a
    connection, then raises it on: the sweep's one line says it already."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))
