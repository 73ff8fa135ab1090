"""Reading NCCL logs fast: :class:`NcclScanner` takes lines or raw byte chunks from any number of
logs into one :class:`~hpcserve.nccl.facts.RunFacts`, and :meth:`NcclScanner.report` judges them.

Only lines whose message starts with a known word are looked at, and each distinct message once
(its first occurrence). The byte-chunk path first drops, in C (``bytes.split`` + set difference),
the runs of lines and the lines it has already seen, so long logs that repeat themselves cost
little more than reading them.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from hpcserve.errors import UsageError
from hpcserve.nccl.facts import RunFacts
from hpcserve.nccl.lines import MSG_RE, MSG_RE_B
from hpcserve.nccl.report import NcclReport
from hpcserve.nccl.verdict import judge

# Caps keeping memory bounded whatever the log holds.
_MAX_SEEN = 200_000
CHUNK_SIZE = 1 << 20
_MAX_SEEN_LINE = 4096  # longer lines are never remembered, always looked at
_MAX_BLOCK = 64 << 10
_MAX_BLOCK_BYTES = 32 << 20
_MAX_LINE_BYTES = 32 << 20
_SKIP_MIN, _SKIP_MAX = 4, 64  # chunks to go without a sieve that did not pay off
_SAMPLE = 64 << 10  # bytes looked at to choose the block delimiter
_SUFFIX = 8
_MAX_LINE = 64 << 20


def _backoff(fails: int) -> tuple[int, int]:
    """Chunks to skip a sieve after its ``fails + 1``-th failure in a row, and the new count."""
    return min(_SKIP_MIN << fails, _SKIP_MAX), min(fails + 1, 8)


def _pick_delimiter(chunk: bytes) -> bytes | None:
    """A line ending that cuts ``chunk`` into short runs of lines, as evenly as can be.

    The runs are what the block sieve remembers; any ``xxxxxxxx\\n`` works for correctness
    (it ends a line), the choice only decides how often runs repeat. Among the line endings
    found on at most one line in 8 (runs of 8 lines or more on average), the one leaving the
    shortest longest run. None if there is none.
    """
    lines = chunk[:_SAMPLE].split(b"\n")[:-1]
    if len(lines) < 64:
        return None
    where: dict[bytes, list[int]] = {}
    for i, ln in enumerate(lines):
        where.setdefault(ln[-_SUFFIX:], []).append(i)
    best, longest = None, len(lines) + 1
    for suffix, at in where.items():
        if len(suffix) < _SUFFIX or not 2 <= len(at) <= len(lines) // 8:
            continue
        gap = max(b - a for a, b in zip([-1, *at], [*at, len(lines)], strict=True))
        if gap < longest:
            best, longest = suffix, gap
    return best + b"\n" if best else None


class NcclScanner(RunFacts):
    """Streaming reader of NCCL debug output: feed lines or byte chunks, then :meth:`report`.

    ``expect_gdr``: IB without GPUDirect RDMA counts as degraded (the default on GPU clusters).
    """

    def __init__(self, expect_gdr: bool = True) -> None:
        super().__init__(expect_gdr)
        self._seen: set[bytes] = set()  # messages parsed
        self._seen_lines: set[bytes] = set()  # raw lines passed to the regex (fast path)
        self._seen_blocks: set[bytes] = set()  # raw runs of lines passed on (fast path)
        self._block_bytes = 0
        self._line_bytes = 0
        self._delim: bytes | None = None  # the line ending that ends a block
        self._block_skip = self._block_fails = 0
        self._line_skip = self._line_fails = 0

    def feed(self, line: str) -> None:
        """Take one line of any log; lines that are not NCCL lines are ignored."""
        if "NCCL" not in line:
            return
        m = MSG_RE.search(line)
        if m is None:
            return
        key = m.group(1).encode("utf-8", "surrogateescape")
        if key in self._seen:
            return
        self._remember(key)
        self.take(line)

    def feed_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.feed(line)

    def feed_chunk(self, chunk: bytes) -> None:
        """Take a block of raw log bytes made of whole lines (the fast path)."""
        self._feed(b"", chunk, len(chunk))

    def _feed(self, head: bytes, block: bytes, end: int) -> None:
        """Take the whole lines ``head + block[:end]``, copying as little of ``block`` as can be.

        Three sieves, each in C over the whole chunk, each passing on only what it has not seen
        (in log order): runs of lines ("blocks", cut after lines ending in a frequent suffix),
        then single lines, then the message regex. A sieve that stops paying off (most of its
        input new, as in logs of unique lines) is skipped for a while.
        """
        if block.find(b"NCCL", 0, end) < 0 and b"NCCL" not in head + block[:3]:
            return
        text = self._block_sieve(head, block, end)
        if text is not None:
            if not text:
                return
            head, block, end = b"", text, len(text)
        if self._line_skip > 0:
            self._line_skip -= 1
        else:
            text = self._new_lines(head, block, end)
            if text:
                self._scan(text)
            return
        first = 0
        if head:  # the line cut by the read, then the rest in place
            first = block.find(b"\n", 0, end) + 1
            self._scan(head + block[:first])
        self._scan(block, first, end)

    def _block_sieve(self, head: bytes, block: bytes, end: int) -> bytes | None:
        """The lines of ``head + block[:end]`` the block sieve passes on; None when the sieve is
        skipped (it has no delimiter, or is backing off), so that all of them pass."""
        if self._block_skip > 0:
            self._block_skip -= 1
            return None
        if self._delim is None:
            self._delim = _pick_delimiter(block)
        if self._delim is None:
            self._block_skip, self._block_fails = _backoff(self._block_fails)
            return None
        text = self._new_blocks(head, block, end, self._delim)
        if len(text) > (len(head) + end) // 2:  # try another delimiter later
            self._block_skip, self._block_fails = _backoff(self._block_fails)
            self._delim = None
        else:
            self._block_fails = 0
        return text

    def _new_blocks(self, head: bytes, block: bytes, end: int, delim: bytes) -> bytes:
        """The lines of ``head + block[:end]`` not inside a block seen before, in order."""
        pieces = block.split(delim)  # delim ends a line: none beyond end
        if head:
            pieces[0] = head + pieces[0]
        last = pieces.pop()  # not followed by delim: handed on as it is
        if end < len(block):
            last = last[: len(last) - (len(block) - end)]
        new = set(pieces) - self._seen_blocks
        if not new:
            return last
        out = []
        for p in pieces:
            if p in new:
                new.discard(p)
                out.append(p)
                if len(p) <= _MAX_BLOCK:
                    self._seen_blocks.add(p)
                    self._block_bytes += len(p)
        if self._block_bytes > _MAX_BLOCK_BYTES:
            self._seen_blocks.clear()
            self._block_bytes = 0
        out.append(last)
        return delim.join(out)

    def _new_lines(self, head: bytes, block: bytes, end: int) -> bytes:
        """The distinct lines of ``head + block[:end]`` not seen before, in order of first
        appearance."""
        lines = block.split(b"\n")
        if end < len(block):
            lines.pop()  # the unfinished line after end
        if head:
            lines[0] = head + lines[0]
        seen = self._seen_lines
        fresh = set(lines) - seen
        if not fresh:
            self._line_fails = 0
            return b""
        if len(fresh) > len(lines) // 2 and len(lines) > 64:
            self._line_skip, self._line_fails = _backoff(self._line_fails)
        else:
            self._line_fails = 0
        new = [ln for ln in dict.fromkeys(lines) if ln in fresh]  # in order
        for ln in new:
            if len(ln) <= _MAX_SEEN_LINE:
                seen.add(ln)
                self._line_bytes += len(ln)
        if len(seen) > _MAX_SEEN or self._line_bytes > _MAX_LINE_BYTES:
            seen.clear()
            self._line_bytes = 0
        return b"\n".join(new)

    def _scan(self, text: bytes, pos: int = 0, end: int | None = None) -> None:
        """Parse the first line of each message in ``text[pos:end]`` not seen before (``pos``
        at a line start, ``end`` just after a line end)."""
        end = len(text) if end is None else end
        if text.find(b"NCCL", pos, end) < 0:
            return
        found = MSG_RE_B.findall(text, pos, end)
        if not found:
            return
        new = set(found) - self._seen
        if not new:
            return
        # Second pass over this text only: first occurrences, in order (the earliest lines are
        # the ones cited), stopping once every new message has been seen.
        for m in MSG_RE_B.finditer(text, pos, end):
            key = m.group(1)
            if key not in new:
                continue
            new.discard(key)
            self._remember(key)
            start = text.rfind(b"\n", 0, m.start()) + 1
            self.take(text[start : m.end()].decode("utf-8", "replace"))
            if not new:
                break

    def feed_stream(self, f: IO[bytes] | gzip.GzipFile, chunk_size: int = CHUNK_SIZE) -> None:
        """Read a binary stream to its end in chunks, each taken up to its last line end."""
        pending: list[bytes] = []  # the unfinished line, in parts
        size = 0
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            cut = block.rfind(b"\n")
            if cut < 0:
                pending.append(block)
                size += len(block)
                if size > max(4 * chunk_size, _MAX_LINE):  # absurd line: look, move on
                    self.feed_chunk(b"".join(pending))
                    pending, size = [], 0
                continue
            self._feed(b"".join(pending), block, cut + 1)
            pending = [block[cut + 1 :]]
            size = len(pending[0])
        if size:
            self.feed_chunk(b"".join(pending))

    def _remember(self, key: bytes) -> None:
        if len(self._seen) >= _MAX_SEEN:
            # Forget everything together: a line or block is only skipped while its message
            # is still remembered.
            self._seen.clear()
            self._seen_lines.clear()
            self._seen_blocks.clear()
            self._block_bytes = self._line_bytes = 0
        self._seen.add(key)

    def report(self) -> NcclReport:
        """The verdict on everything fed so far."""
        return judge(self)


def open_log(path: str) -> IO[bytes] | gzip.GzipFile:
    """Open a log file for binary reading, transparently un-gzipping it."""
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller
    try:
        magic = f.read(2)
        f.seek(0)
    except OSError:
        f.close()
        raise
    if magic == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")  # noqa: SIM115
    return f


def wrap_stream(f: IO[bytes]) -> IO[bytes] | gzip.GzipFile:
    """Un-gzip a binary stream (stdin) if it starts with the gzip magic."""
    peek = getattr(f, "peek", None)
    if peek is not None and peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def scan_lines(lines: Iterable[str], expect_gdr: bool = True) -> NcclReport:
    """Verdict for lines (strings), e.g. from another reader."""
    s = NcclScanner(expect_gdr)
    s.feed_lines(lines)
    return s.report()


def scan_paths(paths: Iterable[str], expect_gdr: bool = True) -> NcclReport:
    """Verdict for log files (plain or gzip'd), read in chunks."""
    s = NcclScanner(expect_gdr)
    for p in paths:
        with open_log(p) as f:
            s.feed_stream(f)
    return s.report()


def scan_sources(
    scanner: NcclScanner, sources: Iterable[str], stdin: IO[bytes] | None = None
) -> None:
    """Feed ``scanner`` each source: a log file (plain or gzip'd), every file under a
    directory (sorted), or ``-`` for ``stdin`` (gzip'd or not; by default this process's
    standard input); UsageError for a file that cannot be read."""
    for src in sources:
        if src == "-":
            scanner.begin_source(None)
            scanner.feed_stream(wrap_stream(stdin if stdin is not None else sys.stdin.buffer))
            continue
        for path in _files_under(Path(src)):
            try:
                with open_log(path) as f:
                    scanner.feed_stream(f)
            except (OSError, EOFError) as e:
                raise UsageError(f"cannot read {path}: {e}") from e


def _files_under(path: Path) -> list[str]:
    """``path`` itself, or every file below the directory ``path`` (UsageError when a directory
    cannot be listed: a verdict from the files that could be read would be a guess)."""
    if not path.is_dir():
        return [str(path)]

    def refuse(e: OSError) -> None:
        raise UsageError(f"cannot read directory {e.filename or path}: {e.strerror or e}") from e

    found = [
        os.path.join(top, name)
        for top, _dirs, names in os.walk(path, onerror=refuse)
        for name in names
    ]
    return sorted(p for p in found if os.path.isfile(p))
