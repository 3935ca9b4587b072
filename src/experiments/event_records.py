"""Reading a run's TensorBoard event files back, record by record, with bounds (``runs.load_job``).

The curves are what TensorBoard's ``EventAccumulator`` shows (its rules for a resumed run: a
``SessionLog.START`` at step S in a version-2 file drops every point from S on; in older files a step
that goes back drops that tag's later points), but read here, so that a hostile or damaged folder
cannot hang or exhaust the reader:

- event files are opened with ``run_files.open_regular``: regular files only, no symbolic link out
  of the folder being read (a FIFO, ``/dev/zero`` or a link to a file elsewhere is refused);
- a run's event files are read up to :data:`MAX_RUN_EVENT_BYTES` in all (a file beyond that, such as
  a huge sparse one, is refused by its size, without reading it);
- a record header is checked (its checksum) before its length is believed, and a length beyond
  :data:`MAX_RECORD_BYTES` or the file's end is refused before anything is allocated (TensorBoard's
  reader allocates what the header claims: 2^62 bytes is a ``MemoryError``);
- a damaged record ends that file's curves there and is reported, where TensorBoard's reader stops
  silently (a file that ends in a partial record is what a killed run leaves: reported apart).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

from .errors import UnreadableFile
from .run_files import open_regular

EVENTS = "events.out.tfevents."  # TensorBoard's event file names begin so
MAX_RECORD_BYTES = 64 * 2**20  # one event: the project writes a few KB (a histogram: ~40 KB)
MAX_RUN_EVENT_BYTES = 2**30  # all of a run's event files: a long run with histograms writes tens of MB

Curve = List[Tuple[int, float, float]]  # (step, wall time, value)


@dataclass
class Problem:
    """Why (part of) an event file was not read. ``partial``: it ends in the middle of a record, as a
    file of a run that was killed (or is still writing) does; anything else is damage or a refusal."""

    text: str
    partial: bool = False


@dataclass
class RunEvents:
    curves: Dict[str, Curve] = field(default_factory=dict)
    started: float = math.nan  # wall time of the first event
    texts: Dict[str, str] = field(default_factory=dict)  # text summaries: tag -> the last text written
    problems: List[Problem] = field(default_factory=list)


def _masked_crc(data: bytes) -> int:
    try:
        import google_crc32c

        x = google_crc32c.value(bytes(data))
    except ImportError:  # TensorBoard's own, in pure Python (slow)
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c

        x = crc32c(bytes(data))
    return (((x >> 15) | ((x << 17) & 0xFFFFFFFF)) + 0xA282EAD8) & 0xFFFFFFFF


class _Stop(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def records(f: BinaryIO, size: int, name: str) -> Iterator[bytes]:
    """The records of an open event file of ``size`` bytes; :class:`_Stop` at the first one that is not whole."""
    position = 0
    while position < size:
        header = f.read(12)
        if len(header) < 12 or position + 12 > size:
            raise _Stop(Problem(f"its event file {name} ends in the middle of a record (byte {position} of {size})",
                                partial=True))
        if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
            raise _Stop(Problem(f"its event file {name} cannot be read to the end: the record at byte {position} of "
                                f"{size} is damaged (its checksum does not match)"))
        length = struct.unpack("<Q", header[:8])[0]
        if length > MAX_RECORD_BYTES:
            raise _Stop(Problem(f"its event file {name} cannot be read to the end: the record at byte {position} "
                                f"claims {length} bytes, more than the {MAX_RECORD_BYTES} an event may have"))
        end = position + 12 + length + 4
        if end > size:
            raise _Stop(Problem(f"its event file {name} ends in the middle of a record (byte {position} of {size})",
                                partial=True))
        data, checksum = f.read(length), f.read(4)
        if len(data) < length or len(checksum) < 4:
            raise _Stop(Problem(f"its event file {name} ends in the middle of a record (byte {position})", partial=True))
        if struct.unpack("<I", checksum)[0] != _masked_crc(data):
            raise _Stop(Problem(f"its event file {name} cannot be read to the end: the record at byte {position} of "
                                f"{size} is damaged (its checksum does not match)"))
        yield data
        position = end


class _Curves:
    """What EventAccumulator keeps of the scalars (``simple_value``), with its purge rules."""

    def __init__(self) -> None:
        self.curves: Dict[str, Curve] = {}
        self.texts: Dict[str, str] = {}
        self.started: Optional[float] = None
        self.file_version: Optional[float] = None
        self.most_recent_step = -1

    def add(self, event) -> None:
        from tensorboard.compat.proto.event_pb2 import SessionLog

        if self.started is None:
            self.started = event.wall_time
        if event.HasField("file_version"):
            try:
                self.file_version = float(event.file_version.split(":")[1])
            except (IndexError, ValueError):
                self.file_version = -1.0
        if self.file_version and self.file_version >= 2:
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                for tag, curve in self.curves.items():
                    self.curves[tag] = [p for p in curve if p[0] < event.step]
        elif event.step < self.most_recent_step and event.HasField("summary"):
            for value in event.summary.value:
                if value.tag in self.curves:
                    self.curves[value.tag] = [p for p in self.curves[value.tag] if p[0] < event.step]
        else:
            self.most_recent_step = event.step
        if event.HasField("summary"):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    self.curves.setdefault(value.tag, []).append((event.step, event.wall_time, value.simple_value))
                elif value.tag.endswith("/text_summary") and value.tensor.string_val:
                    self.texts[value.tag] = value.tensor.string_val[0].decode("utf-8", "replace")


def read_run_events(folder: Path, root: Optional[Path] = None) -> RunEvents:
    """The scalar curves of the run in ``folder`` from its event files (``events.out.tfevents.*``, in name
    order, as TensorBoard reads them), and every problem met, one line each naming the file."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    root = Path(root if root is not None else folder)
    read = RunEvents()
    kept = _Curves()
    budget = MAX_RUN_EVENT_BYTES
    for path in sorted(p for p in Path(folder).iterdir() if p.name.startswith(EVENTS)):
        try:
            f = open_regular(path, root)
        except FileNotFoundError:  # removed since the folder was listed
            continue
        except UnreadableFile as e:
            read.problems.append(Problem(f"its event file {path.name} is not read: {e.reason}"))
            continue
        with f:
            size = os.fstat(f.fileno()).st_size
            if size > budget:
                read.problems.append(Problem(
                    f"its event file {path.name} is not read: it holds {size} bytes, more than the "
                    f"{MAX_RUN_EVENT_BYTES} a run's event files may have in all"))
                continue
            budget -= size
            try:
                for data in records(f, size, path.name):
                    try:
                        event = Event.FromString(data)
                    except DecodeError:
                        raise _Stop(Problem(f"its event file {path.name} cannot be read to the end: a record is "
                                            f"not an event (damaged)")) from None
                    kept.add(event)
            except _Stop as stop:
                read.problems.append(stop.problem)
    read.curves, read.texts = kept.curves, kept.texts
    read.started = kept.started if kept.started is not None else math.nan
    return read
