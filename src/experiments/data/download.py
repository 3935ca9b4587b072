"""Fetch a file over HTTP with progress lines and a checksum; nothing unverified is kept.

The file is written to ``<target>.<pid>.part`` and renamed only once its checksum matches, so a
failed, stalled or corrupted download leaves nothing behind that a later run would trust (the
partial file is removed on every failure, Ctrl-C included). Two limits keep a download from
hanging: ``timeout``, the longest wait for the next bytes (a stalled server), and ``deadline``,
the whole download (a server that drips a byte every few seconds). No network, an HTTP error or
a limit reached is a :class:`DataError` naming the URL and how to do without the download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)

STALL_S = 30.0  # the longest wait for the next bytes
DEADLINE_S = 600.0  # the whole download of one file
PROGRESS_S = 5.0  # a progress line at least this often (and at every 10 %)


def checksum(path: Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, target: Path, expected: str, algorithm: str = "md5", timeout: float = STALL_S,
          deadline: float = DEADLINE_S, avoid: str = "") -> Path:
    """Download ``url`` to ``target`` unless a file with the ``expected`` checksum is there.

    ``timeout``: seconds without a byte before giving up; ``deadline``: seconds for the whole file;
    ``avoid``: how the user can do without the download, for the error message.
    """
    target = Path(target)
    if target.exists() and checksum(target, algorithm) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
    instead = f" Or {avoid}." if avoid else ""
    log.info("downloading %s", url)
    try:
        _download(url, tmp, target.name, timeout, deadline)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        reason = _reason(e, timeout, deadline)
        if reason is None:
            raise
        raise DataError(f"data.download: {url}: {reason}.{instead}") from None
    if checksum(tmp, algorithm) != expected:
        tmp.unlink()
        raise DataError(f"data.download: {url} does not match its {algorithm.upper()} {expected}; "
                        f"the download is corrupted or the mirror changed.{instead}")
    tmp.replace(target)
    return target


class _DeadlinePassed(Exception):
    pass


def _download(url: str, tmp: Path, name: str, timeout: float, deadline: float) -> None:
    import urllib.request  # only when downloading: it is slow to import

    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        total, done, shown, last_line = int(response.headers.get("Content-Length") or 0), 0, 0, started
        while True:
            chunk = response.read1(1 << 16)  # whatever has arrived: a slow drip still reaches the deadline check
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - started > deadline:
                raise _DeadlinePassed(f"{done} of {total or '?'} bytes")
            tenth = 10 * done // total if total else 0
            if tenth > shown or now - last_line >= PROGRESS_S:
                size = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * done // total}%)" if total else \
                    f"{done / 1e6:.1f} MB"
                log.info("  %s: %s, %.0f s", name, size, now - started)
                shown, last_line = max(shown, tenth), now
    if total and done < total:
        raise ConnectionError(f"the connection closed after {done} of {total} bytes")


def _reason(error: BaseException, timeout: float, deadline: float):
    """What went wrong, in words; None for an error that is not about the download."""
    import urllib.error

    if isinstance(error, _DeadlinePassed):
        return f"not finished within the deadline of {deadline:g} s ({error} arrived): the server is too slow. " \
               f"Try again later"
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    if isinstance(error, (socket.timeout, TimeoutError)) or (isinstance(error, urllib.error.URLError) and
                                                             isinstance(error.reason, (socket.timeout, TimeoutError))):
        return f"no data for {timeout:g} s: the server or the network stalled. Try again later"
    if isinstance(error, urllib.error.URLError):
        return f"cannot reach the server ({error.reason}): is there a network connection?"
    if isinstance(error, (ConnectionError, OSError)) and not isinstance(error, FileNotFoundError):
        return f"the download broke off ({error})"
    return None
