"""A progress file (jobs.progress) read in one streaming pass into per-job summaries
(planner.runs.job_log), in memory bounded whatever its length; and read again from where it
stopped, for `eta --watch`.

Parsing every line as JSON costs a few microseconds a line: a run of a million steps took
11.7 s and 1.38 GB when every event was kept as a dict. Most of a long file is step lines of
one shape, the one ProgressWriter writes (``{"event": "step", "time": ...``), and a job's
summary needs few of them one by one. So the file is read in chunks of bytes (into one
buffer, over and over):

- The lines of other events (start, resume, checkpoint, eval, stop, failure, hang, ...) are
  found with one regular expression over the chunk and parsed one by one, as are a job's
  first HEAD step lines (its warm-up is looked for there: ProgressWriter's own step lines
  are read by a pattern of JSON's grammar, anything else by json.loads) and every run of
  step lines shorter than BULK_MIN.
- A longer run of lines between two such lines is taken whole when its first and last
  lines parse, are timed step lines, and their steps are consecutive across its step lines
  (one line a step, in order: a torn or foreign line in it makes the count disagree). Its
  lines then count as timed steps, and their step_s sum is the first line's step_s plus the
  last line's time less the first's: the format defines step_s as the time from the end of
  the previous step (or the save or evaluation after it), and this run has no save or
  evaluation lines in it, so the times telescope (to the microseconds it takes to write a
  line, not accumulating). Only its newest RECENT lines are kept, raw, and parsed when the
  summary is made. A run that fails a check is parsed line by line.

A torn line (a job killed mid-write) is skipped, and so is a line that is not a JSON object
with an ``event``: as jobs.progress.read_progress does. The file is read up to its last
complete line; a last line without its newline is parsed for each summary but read again next
time. A file that shrank or was replaced (another inode) is read again from its start.
Torch-free.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.runs.job_log import HEAD, NOTABLE_EVENTS, NOTABLE_KEPT, RECENT, RECENT_SAVES, JobLog

CHUNK = 4 << 20  # bytes read at a time
Raw = bytes | bytearray
BULK_MIN = 64  # shorter runs of step lines are parsed line by line
STEP_PREFIX = b'{"event": "step",'
_STEP_AFTER_STEP = b"}\n" + STEP_PREFIX
# A line (after its newline) of another event than a step. Lines of no event at all (torn,
# foreign) are not looked for: a run of step lines taken whole must have as many lines as
# steps, and one such line makes it be parsed line by line.
_OTHER_EVENT = re.compile(rb'\n\{"event": "(?!step")')
# A whole step line as ProgressWriter writes it (json.dumps, its keys in its order), each
# value in JSON's grammar: time, step and step_s as groups 1-3.
_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_COUNT = rb"(?:null|-?(?:0|[1-9][0-9]*))"
_WRITERS_STEP = re.compile(
    rb'\{"event": "step", "time": (' + _NUMBER + rb'), "step": (-?(?:0|[1-9][0-9]*)), '
    rb'"samples": ' + _COUNT + rb', "tokens": ' + _COUNT + rb', "step_s": (' + _NUMBER + rb"), "
    rb'"loss": (?:null|NaN|-?Infinity|' + _NUMBER + rb")"
    rb'(?:, "peak_memory_bytes": -?(?:0|[1-9][0-9]*))?\}\n'
)
EVALS_KEPT = 16  # the newest evaluations' times (resubmit uses five)
CHECKPOINT_LINES_KEPT = 64  # the newest checkpoint lines with a path (a command's checkpoints)


class _Job:
    """A job's summary while its lines are read."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.start: Mapping[str, Any] = {}
        self.timed = 0
        self.timed_s = 0.0
        self.head: list[float] = []
        self.recent: collections.deque[float] = collections.deque(maxlen=RECENT)
        # The newest run of step lines taken whole, (chunk, begin, end, lines), after
        # everything in ``recent``: its newest lines are parsed only when they are needed.
        self.pending: tuple[Raw, int, int, int] | None = None
        self.max_step: int | None = None
        self.max_time: float | None = None
        self.load_s: float | None = None
        self.resumed = False
        self.first_step_seen = False
        self.first_step_begin: float | None = None
        self.saves: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT_SAVES)
        self.last_save_step: int | None = None
        self.save_gaps: dict[int, int] = {}  # insertion order: first seen first, as mode() ties
        self.stop_reason: str | None = None
        self.last_event: Mapping[str, Any] | None = None
        self.last_raw: bytes | None = None  # the newest line, when add_step took it unparsed
        self.notable: collections.deque[Mapping[str, Any]] = collections.deque(maxlen=NOTABLE_KEPT)

    def add(self, event: Mapping[str, Any]) -> None:
        """One parsed line, as planner.runs.progress has always read a job's lines."""
        name = event.get("event")
        if self.last_event is None and self.last_raw is None and name == "start":
            self.start = event
        self.last_event, self.last_raw = event, None
        step = _int(event.get("step"))
        if step is not None:
            self.max_step = step if self.max_step is None else max(self.max_step, step)
        moment = _number(event.get("time"))
        if moment is not None:
            self.max_time = moment if self.max_time is None else max(self.max_time, moment)
        if name == "step":
            step_s = _number(event.get("step_s"))
            if step_s is not None and not self.first_step_seen:
                self.first_step_seen = True
                self.first_step_begin = moment - step_s if moment is not None else None
            if step_s is not None and step is not None:
                self._timed(step_s)
        elif name == "resume":
            if not self.resumed:
                self.load_s = _number(event.get("load_s"))
            self.resumed = True
        elif name == "checkpoint":
            save_s = _number(event.get("save_s"))
            if step is not None and save_s is not None:
                if self.last_save_step is not None and step > self.last_save_step:
                    gap = step - self.last_save_step
                    self.save_gaps[gap] = self.save_gaps.get(gap, 0) + 1
                self.last_save_step = step
                self.saves.append((step, save_s))
        if name in NOTABLE_EVENTS:
            if name == "stop":
                self.stop_reason = str(event.get("reason"))
            self.notable.append(event)

    def add_step(self, moment: float, step: int, step_s: float, raw: Raw) -> None:
        """A step line as ProgressWriter writes it (finite time and step_s, a step number):
        what add() does with its dict. ``raw``: the line, parsed only if it is the newest."""
        self.max_step = step if self.max_step is None else max(self.max_step, step)
        self.max_time = moment if self.max_time is None else max(self.max_time, moment)
        if not self.first_step_seen:
            self.first_step_seen = True
            self.first_step_begin = moment - step_s
        self._timed(step_s)
        self.last_event = None
        self.last_raw = bytes(raw)

    def _timed(self, step_s: float) -> None:
        self.settle()
        self.timed += 1
        self.timed_s += step_s
        if len(self.head) < HEAD:
            self.head.append(step_s)
        self.recent.append(step_s)

    def add_run(
        self,
        first: Mapping[str, Any],
        last: Mapping[str, Any],
        run: tuple[Raw, int, int, int],
    ) -> None:
        """A run of consecutive step lines taken whole, ``first`` to ``last``: the job's first
        step line is long behind (its HEAD is full), and ``last`` is its newest step."""
        lines = run[3]
        self.timed += lines
        self.timed_s += float(first["step_s"]) + float(last["time"]) - float(first["time"])
        step, moment = int(last["step"]), float(last["time"])
        self.max_step = step if self.max_step is None else max(self.max_step, step)
        self.max_time = moment if self.max_time is None else max(self.max_time, moment)
        self.last_event, self.last_raw = last, None
        if lines >= RECENT:
            self.recent.clear()  # all of the window comes from this run
        else:
            self.settle()
        self.pending = run

    def detach(self) -> None:
        """Copy the pending run's newest lines out of the buffer it points into."""
        if self.pending is None or isinstance(self.pending[0], bytes):
            return
        block, begin, end, lines = self.pending
        keep = min(lines, RECENT)
        start = _newest_lines(block, begin, end, keep)
        self.pending = (bytes(block[start:end]), 0, end - start, keep)

    def settle(self) -> None:
        """Parse the pending run's newest lines into ``recent`` (and let go of its chunk)."""
        if self.pending is None:
            return
        block, begin, end, lines = self.pending
        self.pending = None
        start = _newest_lines(block, begin, end, min(lines, RECENT))
        for raw in block[start : end - 1].split(b"\n"):
            event = _parse(raw)
            if event is not None and _is_timed(event):
                self.recent.append(float(event["step_s"]))

    def snapshot(self) -> JobLog:
        self.settle()
        if self.last_raw is not None:
            self.last_event, self.last_raw = _parse(self.last_raw), None
        start = self.start
        start_step = _int(start.get("step"))
        last_step = self.max_step if self.max_step is not None else start_step or 0
        return JobLog(
            index=self.index,
            job_id=str(start["job_id"]) if start.get("job_id") else None,
            start_time=_number(start.get("time")),
            start_step=start_step or 0,
            load_s=self.load_s,
            timed=self.timed,
            timed_s=self.timed_s,
            head=tuple(self.head),
            recent=tuple(self.recent),
            last_step=last_step,
            last_time=self.max_time,
            saves=tuple(self.saves),
            save_gaps=tuple(self.save_gaps.items()),
            stop_reason=self.stop_reason,
            resumed=self.resumed,
            first_step_begin=self.first_step_begin,
            last_event=self.last_event,
            notable=tuple(self.notable),
        )


class ProgressReader:
    """Reads a progress file and keeps its summary; ``refresh()`` reads what was appended."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._reset()

    def _reset(self) -> None:
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file read
        self.offset = 0  # bytes read, the partial last line included
        self._partial = b""
        self.jobs: list[_Job] = []
        self.events = 0  # lines that parsed as events
        self.total_steps: int | None = None  # the newest line's total_steps
        self.evals: collections.deque[float] = collections.deque(maxlen=EVALS_KEPT)
        self.checkpoint_lines: collections.deque[tuple[int | None, str]] = collections.deque(
            maxlen=CHECKPOINT_LINES_KEPT
        )

    @property
    def exists(self) -> bool:
        return self.identity is not None

    def refresh(self) -> None:
        """Read the lines appended since the last call (all of them the first time)."""
        try:
            with open(self.path, "rb", buffering=0) as handle:
                status = os.fstat(handle.fileno())
                identity = (status.st_dev, status.st_ino)
                if identity != self.identity or status.st_size < self.offset:
                    self._reset()
                    self.identity = identity
                handle.seek(self.offset)
                # One buffer, read into again and again: fresh pages for every chunk cost
                # as much as reading them. The partial line read last time goes first.
                buffer = bytearray(CHUNK)
                while True:
                    kept = len(self._partial)
                    if len(buffer) < kept + CHUNK:
                        buffer = bytearray(kept + CHUNK)
                    buffer[:kept] = self._partial
                    size = handle.readinto(memoryview(buffer)[kept : kept + CHUNK])
                    if not size:
                        break
                    self.offset += size
                    self._block(buffer, kept + size)
                    if self.jobs:
                        self.jobs[-1].detach()  # its pending run must not point into buffer
        except FileNotFoundError:
            self._reset()

    def snapshot(self) -> ProgressSummary:
        """The summary of every complete line read, and of a last line without its newline
        when it parses (it is read again by the next refresh)."""
        reader = self
        event = _parse(self._partial) if self._partial else None
        if event is not None:
            reader = copy.deepcopy(self)
            reader._event(event)
        return ProgressSummary(
            jobs=tuple(job.snapshot() for job in reader.jobs),
            events=reader.events,
            total_steps=reader.total_steps,
            evals=tuple(reader.evals),
            checkpoint_lines=tuple(reader.checkpoint_lines),
        )

    # -- reading ---------------------------------------------------------------------------

    def _block(self, block: bytearray, length: int) -> None:
        """block[:length]: what was read; up to its last newline are whole lines."""
        end = block.rfind(b"\n", 0, length) + 1
        self._partial = bytes(block[end:length])
        if end:
            self._lines(block, 0, end)

    def _lines(self, block: Raw, begin: int, end: int) -> None:
        """block[begin:end]: whole lines, the last ending with a newline."""
        position = begin
        for other in _other_lines(block, begin, end):
            if other > position:
                self._step_lines(block, position, other)
            line_end = block.find(b"\n", other, end)
            self._line(block[other:line_end])
            position = line_end + 1
        if position < end:
            self._step_lines(block, position, end)

    def _step_lines(self, block: Raw, begin: int, end: int) -> None:
        """block[begin:end]: lines that each begin as a step line."""
        position = begin
        # A job's first HEAD timed steps, one by one: ProgressWriter's own step lines read
        # by a pattern of JSON's grammar (what json.loads reads of them, at a quarter of the
        # cost), any other line parsed.
        while position < end and (not self.jobs or len(self.jobs[-1].head) < HEAD):
            match = _WRITERS_STEP.match(block, position, end) if self.jobs else None
            if match is not None:
                moment, step_s = float(match[1]), float(match[3])
                if math.isfinite(moment) and math.isfinite(step_s):  # not 1e400
                    self.events += 1
                    self.jobs[-1].add_step(moment, int(match[2]), step_s, match[0])
                    position = match.end()
                    continue
            line_end = block.find(b"\n", position, end)
            self._line(block[position:line_end])
            position = line_end + 1
        if position >= end:
            return
        # Line ends followed by a step line's start: one fewer than the lines when every line
        # is a whole step line. A torn or foreign line breaks two of them, so that with the
        # steps' span it cannot add up (_consecutive), even where a step line is missing too.
        lines = block.count(_STEP_AFTER_STEP, position, end) + 1
        first = last = None
        if lines >= BULK_MIN:
            first = _parse(block[position : block.find(b"\n", position, end)])
            last = _parse(block[block.rfind(b"\n", position, end - 1) + 1 : end - 1])
        if first is None or last is None or not _consecutive(first, last, lines):
            for line in _split(block, position, end):
                self._line(line)
            return
        self.events += lines
        self.jobs[-1].add_run(first, last, (block, position, end, lines))

    def _line(self, raw: Raw) -> None:
        if raw.isascii() and b"\r" not in raw:
            # The common line, parsed as it is: in ASCII JSON no other character splits it.
            try:
                event = json.loads(raw)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                self._event(event)
                return
        # As jobs.progress.read_progress reads: replace what is not UTF-8, and split the line
        # where str.splitlines does (a stray \r ends a line there too).
        for text in bytes(raw).decode("utf-8", errors="replace").splitlines():
            event = _parse_text(text)
            if event is not None:
                self._event(event)

    def _event(self, event: Mapping[str, Any]) -> None:
        self.events += 1
        if event.get("event") == "start" or not self.jobs:
            if self.jobs:
                self.jobs[-1].settle()  # an ended job keeps no chunk
            self.jobs.append(_Job(len(self.jobs)))
        self.jobs[-1].add(event)
        total = event.get("total_steps")
        if total and _int(total) is not None:
            self.total_steps = _int(total)
        name = event.get("event")
        eval_s = _number(event.get("eval_s"))
        if name == "eval" and eval_s:
            self.evals.append(eval_s)
        elif name == "checkpoint" and event.get("path"):
            self.checkpoint_lines.append((_int(event.get("step")), str(event["path"])))


@dataclass(frozen=True)
class ProgressSummary:
    """What a ProgressReader read: its jobs' summaries and the run's own lines."""

    jobs: tuple[JobLog, ...]
    events: int  # lines that are events
    total_steps: int | None  # the newest line that gives one
    evals: tuple[float, ...]  # the newest evaluations' eval_s, in order
    checkpoint_lines: tuple[tuple[int | None, str], ...]  # the newest (step, path) lines


def read_summary(path: str | os.PathLike[str]) -> ProgressSummary:
    reader = ProgressReader(path)
    reader.refresh()
    return reader.snapshot()


def _other_lines(block: Raw, begin: int, end: int) -> Iterator[int]:
    """Where each line of block[begin:end] of another event than a step begins (and the first
    line, when it does not begin as a step line)."""
    if not block.startswith(STEP_PREFIX, begin):
        yield begin
    for match in _OTHER_EVENT.finditer(block, begin, end):
        yield match.start() + 1


def _newest_lines(block: Raw, begin: int, end: int, count: int) -> int:
    """Where the newest ``count`` lines of block[begin:end] (whole lines) begin."""
    start = end - 1
    for _ in range(count):  # -1 only past the first line
        start = block.rfind(b"\n", begin, start)
    return max(start + 1, begin)


def _split(block: Raw, begin: int, end: int) -> Sequence[Raw]:
    return block[begin : end - 1].split(b"\n")


def _is_timed(event: Mapping[str, Any]) -> bool:
    """A step line that times a step: with a step number and a finite step_s."""
    step_s = event.get("step_s")
    return event.get("event") == "step" and _finite(step_s) and _int(event.get("step")) is not None


def _consecutive(first: Mapping[str, Any], last: Mapping[str, Any], lines: int) -> bool:
    """Both are timed step lines, ``lines`` lines apart less one, one step a line, in order."""
    if not all(_is_timed(event) and _finite(event.get("time")) for event in (first, last)):
        return False
    steps = int(last["step"]) - int(first["step"])
    return steps == lines - 1 and float(last["time"]) >= float(first["time"])


def _parse(raw: Raw) -> dict[str, Any] | None:
    return _parse_text(raw.decode("utf-8", errors="replace"))


def _parse_text(text: str) -> dict[str, Any] | None:
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _number(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _int(value: Any) -> int | None:
    # NaN, infinities and counts past 64 bits are damage, not steps: read as missing.
    if not _finite(value) or not -(2**63) <= value < 2**63:
        return None
    return int(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
