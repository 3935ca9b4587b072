"""Reading a run folder's files as data that may be hostile (a folder someone shared, a damaged disk).

What reads run folders (the report, a sweep's closing summary, inspection) opens their files here:

- only regular files: a FIFO would block the reader for ever and a device (``/dev/zero``) never ends.
  A file is opened without blocking and checked (``fstat``) before a byte of it is read;
- a symbolic link only to a file inside the folder being read;
- a file written into such a folder (the report's) replaces what has its name instead of writing through
  it (:func:`write_replacing`): a ``report.md`` that is a link to a file elsewhere is not overwritten;
- a bounded amount: a text or YAML file at most :data:`MAX_TEXT_BYTES`; a YAML file whose aliases would
  expand it beyond :data:`MAX_YAML_NODES` nodes (a "billion laughs" file is a few hundred bytes that
  OmegaConf would expand for minutes) or that refers to itself is refused before OmegaConf sees it.

A refusal is an :class:`~experiments.errors.UnreadableFile` whose message names the file and why, in one
line. Event files are read record by record in ``event_records``, on top of :func:`open_regular`.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional

from omegaconf import OmegaConf

from .errors import UnreadableFile

MAX_TEXT_BYTES = 4 * 2**20  # a .hydra/*.yaml, multirun.yaml, failure.txt: a few KB when written by a run
MAX_YAML_NODES = 100_000  # nodes of a YAML file once its aliases are expanded (a run's config.yaml: ~500)

KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


def refused(path: Path, reason: str) -> UnreadableFile:
    """``<path> is not read: <reason>``; the file is ``.path``, the reason alone ``.reason``."""
    error = UnreadableFile(f"{path} is not read: {reason}")
    error.path, error.reason = Path(path), reason
    return error


def outside(path: Path, root: Optional[Path]) -> Optional[Path]:
    """Where ``path`` leads if a symbolic link takes it out of ``root``, else None."""
    if root is None:
        return None
    target, base = Path(path).resolve(), Path(root).resolve()
    return None if target == base or target.is_relative_to(base) else target


def open_regular(path: Path, root: Optional[Path] = None) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (inside ``root``, when given)."""
    path = Path(path)
    target = outside(path, root)
    if target is not None:
        raise refused(path, f"it is a symbolic link to {target}, outside {root}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens without waiting for a writer
    except FileNotFoundError:
        raise
    except OSError as e:
        raise refused(path, f"it cannot be opened ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise refused(path, f"it is {KINDS.get(stat.S_IFMT(mode), 'not a file')}, not a regular file")
    return os.fdopen(fd, "rb")


def read_bytes(path: Path, root: Optional[Path] = None, limit: int = MAX_TEXT_BYTES, cut: bool = False) -> bytes:
    """At most ``limit`` bytes of a regular file: a longer one is refused, or with ``cut`` cut there."""
    with open_regular(path, root) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        if not cut:
            raise refused(path, f"it is larger than the {limit} bytes such a file may have")
        data = data[:limit]
    return data


def read_text(path: Path, root: Optional[Path] = None, limit: int = MAX_TEXT_BYTES, cut: bool = False) -> str:
    return read_bytes(path, root, limit, cut).decode("utf-8", errors="replace")


def load_yaml(path: Path, root: Optional[Path] = None):
    """A YAML file as OmegaConf loads it, once it is known to be small and free of alias bombs."""
    text = read_text(path, root)
    check_aliases(text, path)
    return OmegaConf.load(io.StringIO(text))


def _children(node) -> List:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_aliases(text: str, path: Path) -> None:
    """Refuse a YAML text whose aliases expand it beyond :data:`MAX_YAML_NODES` nodes, or refer to a node
    from inside it. The node graph (an alias is its anchored node again, expanded nowhere) is walked once."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # not libyaml's: deep nesting overflows its C stack
    except yaml.YAMLError:
        return  # not valid YAML: OmegaConf says where
    except RecursionError:
        raise refused(path, "it is nested too deeply") from None
    if root is None:
        return
    sizes: Dict[int, int] = {}
    on_path = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_YAML_NODES:
                raise refused(path, f"its aliases expand it beyond {MAX_YAML_NODES} nodes (a run writes no aliases)")
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise refused(path, "an alias in it refers to a node that contains it")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def write_replacing(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path``: into a new file beside it, then renamed over it, so that whatever had the
    name (a symbolic link to a file elsewhere, a FIFO) is replaced, not written through."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
