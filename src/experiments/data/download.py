"""Fetch a file over HTTP with progress lines and a checksum; nothing unverified is kept.

The file is written to ``<target>.part`` and renamed only once its checksum matches, so a
failed or corrupted download leaves nothing behind that a later run would trust.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)


def checksum(path: Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, target: Path, expected: str, algorithm: str = "md5", timeout: float = 60) -> Path:
    """Download ``url`` to ``target`` unless a file with the ``expected`` checksum is there."""
    import urllib.request  # only when downloading: it is slow to import

    target = Path(target)
    if target.exists() and checksum(target, algorithm) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        total, done, shown = int(response.headers.get("Content-Length") or 0), 0, -1
        for chunk in iter(lambda: response.read(1 << 16), b""):
            out.write(chunk)
            done += len(chunk)
            percent = 100 * done // total if total else -1
            if percent // 10 > shown // 10:
                log.info("  %s: %d%% of %.1f MB", target.name, percent, total / 1e6)
                shown = percent
    if checksum(tmp, algorithm) != expected:
        tmp.unlink()
        raise DataError(f"data.download: {url} does not match its {algorithm.upper()} {expected}; "
                        f"the download is corrupted or the mirror changed.")
    tmp.replace(target)
    return target
