"""Replay: read the log back at start-up, record by record, and tell a torn tail from
corruption. Synchronous (no trio); the store runs it in a thread before it reports ready.

What can be damaged, and the replay rule
----------------------------------------
The model (SQLite's crash model): a crash of the process loses nothing that was written; a
power cut may keep, drop or garble, in any combination and order, every write made since
the last *completed* fsync of that file, and nothing before it. The writer keeps to these
orders, so the damage a power cut can do is always at the end of the newest segment:

* a segment is complete and ``fdatasync``'d (and the directory fsync'd) before the next one
  is created, and a new segment's header is written and ``fdatasync``'d before any record
  goes into it;
* a failed write is truncated back to the last good record and that truncation is
  ``fdatasync``'d before anything else is written;
* a compaction snapshot is fsync'd before it is renamed into place (``compact``).

Replay reads the snapshot (if any) and every segment in order (``mmap``, no copy of the
audio) and checks every record: header fields, length bound and that the frame lies within
the file, CRC, seq continuity (the first segment starts at seq 1, or where the snapshot says
the log goes on, each next one at the previous last seq + 1, each record at the previous
+ 1), known type, and that the payload unpacks to a map (plus, for a CHUNK, one bin that
ends exactly at the frame's end). Replay for the index (``routes``) parses a CHUNK's map
through to its end but decodes only the fields the index needs (``scan``), so a string
elsewhere in it is not checked to be UTF-8 there; reading the chunk decodes it whole. Then:

* **Older segments and the snapshot** were fsync'd in full: any bad frame or header there is
  corruption, and replay raises ``CorruptLog`` naming the file and frame offset.
* **The newest segment**: let X be the first frame that is partial or fails its length bound
  or CRC, and s the seq it should have. If a valid CHECKPOINT frame *after* X says records up
  to D >= s were fsync'd, the bad frame was durable before it was damaged: that is
  corruption, ``CorruptLog``. Otherwise the record at X may have been in flight at a crash,
  so everything from X to the end of file is a *torn tail*: the cut bytes are copied to
  ``<segment>.torn`` (or ``<segment>.<n>.torn``) and fsync'd, the segment is truncated to
  its last good record and fsync'd, the directory is fsync'd, a warning is logged and the
  tail is reported. Valid frames after X without such a checkpoint (a power cut kept a later
  write and garbled an earlier one) go to the ``.torn`` file with the rest: they were never
  durable, so they were never acknowledged in ``always`` mode.
* A newest segment no longer than its header, or all zero bytes (created, but its header's
  fsync never completed) is torn as a whole: saved, removed. A bad header on a longer newest
  segment is corruption (records are only written after the header's fsync).
* **The manifest** (``log/MANIFEST``, see ``record``) names the newest segment N, the offset
  O up to which it was fsync'd and the seq D up to which every record was. The writer
  rewrites it after an fsync at most every ``fsync_interval_s``, at the first sync into a
  new segment and at every checkpoint (start-up, clean close). Falling short of it is
  corruption, not a torn tail: segment N missing (unless a snapshot replaced it), a bad
  header or frame below O in the newest segment N, N ending before O, or a log that ends
  before seq D. Past O the rules above apply. A log with no manifest (written before there
  was one) replays by the rules above alone, and gets one at the store's start-up.
* A frame whose CRC verifies but whose content is wrong (seq out of order, unknown type, a
  checkpoint naming a seq not yet written, payload that does not unpack) is corruption
  anywhere, since no torn write produces that.

What that guarantees: with fsync ``always`` every acknowledged record was fsync'd, so a torn
tail never holds one. With ``interval``, replay loses only records written after the last
completed fsync. A bit flipped by the disk in a record that a later checkpoint proves durable
is always reported as corruption. The one window where a flip cannot be told from a torn
write is the last batch before a crash, until the restart writes its checkpoint (the store
does at start-up): a flip there is handled as a torn tail, and its bytes are kept in the
``.torn`` file and named in the warning, not lost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import attrs

from ..errors import CorruptLog, StoreError
from .files import (
    MANIFEST_FILE,
    SEGMENT_NAME,
    SEGMENT_SUFFIX,
    SNAPSHOT_NAME,
    SNAPSHOT_SUFFIX,
    TMP_SUFFIX,
    all_zero,
    fsync_dir,
    list_segments,
    list_snapshots,
    log_dir,
    read_manifest,
    require_log_if_created,
    save_torn,
    segment_name,
    truncate,
)
from .record import (
    FIRST_SEQ,
    SEGMENT_HEADER_SIZE,
    SNAPSHOT_MAGIC,
    BlobRef,
    Manifest,
    Record,
    parse_manifest,
    parse_segment_header,
)
from .scan import RouteSink, Scan, find_checkpoint, scan_file

__all__ = ["ReplayReport", "Scan", "find_checkpoint", "read_blob", "replay"]

logger = logging.getLogger("trio_audio.store")


@attrs.frozen
class ReplayReport:
    """What replay found.

    ``records`` counts the data records kept (checkpoints are counted in ``checkpoints``,
    snapshot records in ``records`` too), ``segments`` the segment files, ``bytes`` the size
    of the kept files (headers and snapshot included), ``last_seq`` the seq of the last good
    record (0 for an empty log: the writer goes on at ``last_seq + 1``). ``torn_bytes`` were
    cut off the newest segment and saved in ``torn_file`` (its path; None when nothing was
    cut or the cut was empty), ``torn_reason`` says what was wrong with the first cut frame.
    ``durable_seq`` is the highest seq the log itself proves was fsync'd (sealed segments, the
    snapshot, checkpoints): hand it to ``LogWriter(proven_seq=...)``. ``snapshot`` names the
    snapshot replayed first, ``removed`` what replay deleted as left over from a compaction,
    ``manifest`` what the manifest said (None for a log written before there was one).
    """

    records: int
    segments: int
    bytes: int
    torn_bytes: int
    torn_file: str | None
    last_seq: int
    torn_reason: str | None = None
    durable_seq: int = 0
    checkpoints: int = 0
    snapshot: str | None = None
    removed: tuple[str, ...] = ()
    manifest: Manifest | None = None


def replay(
    data_dir: Path,
    on_record: Callable[[Record], None],
    *,
    dry_run: bool = False,
    routes: bool = False,
    on_route: RouteSink | None = None,
) -> ReplayReport:
    """Check every record of the log in order and hand each good one to *on_record*.

    Reads the manifest, the newest snapshot if there is one, then the segments. Cuts a torn
    tail off the newest segment and raises ``CorruptLog`` for damage anywhere else (see the
    module docstring); removes what a compaction left behind. With *dry_run* it changes
    nothing: the same verdict, the same records, and the torn tail is only reported
    (``check`` uses it so that its verdict is replay's). With *routes* a CHUNK record's
    ``meta`` holds only the fields the index needs (``scan.ROUTE``): every record is checked
    the same, only less of it is turned into Python objects; with *on_route* too such a
    record goes to *on_route* (``scan.RouteSink``) instead of *on_record*.
    """
    require_log_if_created(data_dir)
    directory = log_dir(data_dir)
    manifest = load_manifest(directory)
    expected = FIRST_SEQ
    records = segments = total = checkpoints = 0
    durable = 0
    snapshot: str | None = None
    snapshots = list_snapshots(data_dir)
    if snapshots:
        snapshot = snapshots[-1]
        scan = read_snapshot(data_dir, snapshot, on_record, routes=routes, on_route=on_route)
        assert scan.end_seq is not None
        expected = scan.end_seq
        durable = expected - 1
        records += scan.records
        total += scan.good_end
    removed = _remove_leftovers(directory, snapshots, expected, dry_run)
    names = [n for n in list_segments(data_dir) if n not in removed]
    if manifest is not None:
        _check_manifest_segment(directory, manifest, names, expected)
    torn_bytes = 0
    torn_file: str | None = None
    torn_reason: str | None = None
    for i, name in enumerate(names):
        newest = i == len(names) - 1
        path = directory / name
        name_seq = int(name[: -len(SEGMENT_SUFFIX)])
        # How much of the newest segment the manifest says was fsync'd: nothing before that
        # offset can be a torn write.
        synced = 0
        if newest and manifest is not None and manifest.segment == name_seq:
            synced = manifest.offset
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            header = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
            parsed = parse_segment_header(header)
            if isinstance(parsed, str):
                if newest and (size <= SEGMENT_HEADER_SIZE or all_zero(fd, size)):
                    if synced:
                        raise CorruptLog(str(path), 0, _below_manifest(parsed, manifest))
                    torn = None
                    if not dry_run:
                        torn = save_torn(directory, name, fd, 0, size)
                        os.close(fd)
                        fd = -1
                        os.unlink(path)
                        fsync_dir(directory)
                    torn_bytes, torn_reason = size, f"segment header: {parsed}"
                    torn_file = None if torn is None else str(torn)
                    _warn_torn(path, 0, size, torn_reason, torn_file, dry_run)
                    break
                raise CorruptLog(str(path), 0, parsed)
            salt, base_seq = parsed
            if name_seq != base_seq:
                msg = f"file name says base seq {name_seq}, header says {base_seq}"
                raise CorruptLog(str(path), 0, msg)
            scan = _scan_segment(
                fd, size, salt, base_seq, expected, path, on_record, routes, on_route
            )
            checkpoints += scan.checkpoints
            if scan.bad_offset is not None:
                assert scan.bad_reason is not None
                if not newest:
                    raise CorruptLog(str(path), scan.bad_offset, scan.bad_reason)
                if scan.bad_offset < synced:
                    msg = _below_manifest(scan.bad_reason, manifest)
                    raise CorruptLog(str(path), scan.bad_offset, msg)
                proof = find_checkpoint(fd, size, salt, scan.bad_offset, scan.next_seq)
                if proof is not None:  # the damaged record had been fsync'd: not a torn write
                    msg = (
                        f"{scan.bad_reason} in a record that was fsync'd "
                        f"(the checkpoint at offset {proof[0]} says seqs up to {proof[1]} were)"
                    )
                    raise CorruptLog(str(path), scan.bad_offset, msg)
                cut = size - scan.good_end
                torn = None
                if not dry_run:
                    torn = save_torn(directory, name, fd, scan.good_end, size)
                    truncate(path, scan.good_end)
                    fsync_dir(directory)
                size = scan.good_end
                torn_bytes, torn_reason = cut, scan.bad_reason
                torn_file = None if torn is None else str(torn)
                _warn_torn(path, scan.bad_offset, cut, torn_reason, torn_file, dry_run)
            elif size < synced:
                msg = f"the segment ends at offset {size}, " + _below_manifest("", manifest)
                raise CorruptLog(str(path), size, msg)
        finally:
            if fd >= 0:
                os.close(fd)
        records += scan.records
        segments += 1
        total += size
        # Older segments were fsync'd in full before the next one was created.
        durable = max(durable, scan.durable, scan.next_seq - 1 if not newest else 0)
        expected = scan.next_seq
    if manifest is not None and expected - 1 < manifest.durable:
        path = directory / (names[-1] if names else MANIFEST_FILE)
        end = path.stat().st_size if names and path.exists() else 0
        msg = (
            f"the log ends at seq {expected - 1}, but the manifest says every record up to "
            f"seq {manifest.durable} was fsync'd"
        )
        raise CorruptLog(str(path), end, msg)
    return ReplayReport(
        records=records,
        segments=segments,
        bytes=total,
        torn_bytes=torn_bytes,
        torn_file=torn_file,
        last_seq=expected - 1,
        torn_reason=torn_reason,
        durable_seq=durable,
        checkpoints=checkpoints,
        snapshot=snapshot,
        removed=tuple(removed),
        manifest=manifest,
    )


def load_manifest(directory: Path) -> Manifest | None:
    """The log's manifest; None for a log written before there was one. A manifest that
    does not parse is ``CorruptLog`` (it is only ever replaced whole, by rename)."""
    data = read_manifest(directory)
    if data is None:
        return None
    parsed = parse_manifest(data)
    if isinstance(parsed, str):
        raise CorruptLog(str(directory / MANIFEST_FILE), 0, parsed)
    return parsed


def _check_manifest_segment(
    directory: Path, manifest: Manifest, names: list[str], start: int
) -> None:
    """The segment the manifest names must be there, unless a snapshot (the log starts at
    *start*) replaced it."""
    if manifest.segment == 0 or manifest.segment < start:
        return
    name = segment_name(manifest.segment)
    if name not in names:
        msg = (
            f"the segment is missing, but the manifest says it was fsync'd to offset "
            f"{manifest.offset} (every record up to seq {manifest.durable})"
        )
        raise CorruptLog(str(directory / name), 0, msg)


def _below_manifest(reason: str, manifest: Manifest | None) -> str:
    assert manifest is not None
    said = (
        f"the manifest says it was fsync'd to offset {manifest.offset} "
        f"(every record up to seq {manifest.durable})"
    )
    return f"{reason} below where {said}" if reason else f"but {said}"


def read_snapshot(
    data_dir: Path,
    name: str,
    on_record: Callable[[Record], None],
    *,
    routes: bool = False,
    on_route: RouteSink | None = None,
) -> Scan:
    """Check a whole snapshot and hand its records to *on_record*; any defect is
    ``CorruptLog`` (a snapshot was fsync'd before it was renamed into place)."""
    path = log_dir(data_dir) / name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0), SNAPSHOT_MAGIC)
        if isinstance(parsed, str):
            raise CorruptLog(str(path), 0, parsed)
        salt, start = parsed
        if int(name[: -len(SNAPSHOT_SUFFIX)]) != start:
            msg = f"file name says the log starts at {name[:16]}, header says {start}"
            raise CorruptLog(str(path), 0, msg)
        scan = Scan(next_seq=FIRST_SEQ, end_seq=start)
        if size > SEGMENT_HEADER_SIZE:
            scan_file(
                fd, size, salt, name, str(path), scan, on_record, routes=routes, on_route=on_route
            )
        if scan.bad_offset is not None:
            assert scan.bad_reason is not None
            raise CorruptLog(str(path), scan.bad_offset, scan.bad_reason)
        if not scan.ended:
            raise CorruptLog(str(path), scan.good_end, "the snapshot has no end marker")
        return scan
    finally:
        os.close(fd)


def read_segment(
    data_dir: Path,
    name: str,
    expected: int,
    on_record: Callable[[Record], None],
    *,
    routes: bool = False,
    on_route: RouteSink | None = None,
) -> int:
    """Check a whole sealed segment that must start at seq *expected* and hand its records to
    *on_record*; any defect is ``CorruptLog``. Returns the seq after its last record."""
    path = log_dir(data_dir) / name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        parsed = parse_segment_header(os.pread(fd, SEGMENT_HEADER_SIZE, 0))
        if isinstance(parsed, str):
            raise CorruptLog(str(path), 0, parsed)
        salt, base_seq = parsed
        scan = _scan_segment(fd, size, salt, base_seq, expected, path, on_record, routes, on_route)
        if scan.bad_offset is not None:
            assert scan.bad_reason is not None
            raise CorruptLog(str(path), scan.bad_offset, scan.bad_reason)
        return scan.next_seq
    finally:
        os.close(fd)


def _scan_segment(
    fd: int,
    size: int,
    salt: int,
    base_seq: int,
    expected: int,
    path: Path,
    on_record: Callable[[Record], None],
    routes: bool = False,
    on_route: RouteSink | None = None,
) -> Scan:
    """The frames of a segment whose header held, which must start at seq *expected*."""
    if base_seq != expected:
        msg = f"segment starts at seq {base_seq}, expected {expected}"
        raise CorruptLog(str(path), 0, msg)
    scan = Scan(next_seq=base_seq)
    if size > SEGMENT_HEADER_SIZE:
        scan_file(
            fd, size, salt, path.name, str(path), scan, on_record, routes=routes, on_route=on_route
        )
    return scan


def _remove_leftovers(
    directory: Path, snapshots: list[str], start: int, dry_run: bool = False
) -> list[str]:
    """Delete what a compaction or manifest rewrite that crashed left: ``*.tmp`` files, older
    snapshots and the segments the newest snapshot covers (based before *start*); with
    *dry_run* only name them."""
    if not directory.is_dir():
        return []
    names = sorted(os.listdir(directory))
    doomed = [n for n in names if n.endswith(TMP_SUFFIX)] + snapshots[:-1]
    doomed += [n for n in names if SEGMENT_NAME.match(n) and int(n[:16]) < start]
    if doomed and not dry_run:
        fsync_dir(directory)  # the snapshot's rename is durable before what it replaced goes
        for name in doomed:
            os.unlink(directory / name)
        fsync_dir(directory)
        logger.info("removed %s left over from a crash", ", ".join(doomed))
    return doomed


def _warn_torn(
    path: Path, offset: int, cut: int, reason: str, torn: str | None, dry_run: bool
) -> None:
    if dry_run:
        return
    logger.warning(
        "torn tail in %s at offset %d (%s): cut %d bytes, kept in %s; "
        "records after a torn write were never acknowledged as durable",
        path,
        offset,
        reason,
        cut,
        torn,
    )


# -- reading blobs ---------------------------------------------------------------------------


def read_blob(data_dir: Path, ref: BlobRef) -> bytes:
    """The audio bytes *ref* points at."""
    if not (SEGMENT_NAME.match(ref.segment) or SNAPSHOT_NAME.match(ref.segment)):
        msg = f"not a segment name: {ref.segment!r}"
        raise StoreError(msg)
    path = log_dir(data_dir) / ref.segment
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        got = 0
        while got < ref.length:
            data = os.pread(fd, ref.length - got, ref.offset + got)
            if not data:
                msg = f"short read of {path}: {got} of {ref.length} bytes at offset {ref.offset}"
                raise StoreError(msg)
            parts.append(data)
            got += len(data)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)
