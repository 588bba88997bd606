"""Strong labels: the sound events of DCASE's metadata TSVs, matched to a split's clips.

A TSV has a header and one row per event, tab-separated: ``filename``, ``onset`` and ``offset`` in
seconds, ``event_label`` (as DESED and every DCASE sound-event-detection set ship them). A row with
an empty onset, offset and label names a clip in which no event happens. A ``filename`` is a path
relative to the TSV's folder, or a clip's file name alone where one clip of the split has it. An
``event_label`` is a class's ``mid`` or its ``display_name`` in the label CSV.

The clips a TSV names have strong labels (their events; none, for a clip named only by an empty
row); the others keep their clip labels alone.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence

from aum_jax.core.errors import UserError
from aum_jax.data.records import Event

COLUMNS = ("filename", "onset", "offset", "event_label")


class EventsError(UserError, ValueError):
    """An events TSV that cannot be read as strong labels: the message names the file and the row."""


def _clip_index(paths: Sequence[str], root: str) -> tuple[dict[str, int], dict[str, list[int]]]:
    """A split's clip paths -> (absolute path -> clip index, file name -> clip indices)."""
    by_path: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        by_path[os.path.normpath(os.path.join(root, path))] = i
        by_name.setdefault(os.path.basename(path), []).append(i)
    return by_path, by_name


def _seconds(value: str, what: str, where: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise EventsError(f"{where}: {what} {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise EventsError(f"{where}: {what} {value!r} must be a finite number of seconds >= 0")
    return seconds


def read_events(tsv: str | os.PathLike, clips: Sequence[str], classes: Mapping[str, int]) -> list[tuple[Event, ...] | None]:
    """The events of each of ``clips`` (their absolute paths) from the TSV ``tsv``.

    Args:
      tsv: a DCASE metadata TSV (see the module docstring).
      clips: the split's clips, absolute paths.
      classes: class name (``mid`` or ``display_name``) -> index.

    Returns:
      For each clip, its events sorted by onset (empty: a clip named with no event), or None where
      the TSV does not name it.

    Raises:
      EventsError: a missing column, an unknown file or label, or an onset that is not before its
        offset; the message names the file and the row.
    """
    tsv = os.fspath(tsv)
    by_path, by_name = _clip_index(clips, os.path.dirname(os.path.abspath(tsv)))
    events: list[list[Event] | None] = [None] * len(clips)
    with open(tsv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise EventsError(f"{tsv}: no column {', '.join(missing)} (a DCASE TSV has the tab-separated columns "
                              f"{', '.join(COLUMNS)})")
        for row in reader:
            where = f"{tsv}, row {reader.line_num}"
            name = (row["filename"] or "").strip()
            index = by_path.get(os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(tsv)), name)))
            if index is None and len(by_name.get(os.path.basename(name), ())) == 1:
                index = by_name[os.path.basename(name)][0]
            if index is None:
                raise EventsError(f"{where}: {name!r} is not one clip of the split")
            if events[index] is None:
                events[index] = []
            onset, offset, label = ((row[c] or "").strip() for c in COLUMNS[1:])
            if not (onset or offset or label):
                continue  # the clip holds no event.
            if label not in classes:
                raise EventsError(f"{where}: event_label {label!r} is not a class of the label CSV")
            start, end = _seconds(onset, "onset", where), _seconds(offset, "offset", where)
            if end <= start:
                raise EventsError(f"{where}: offset {end:g} s is not after onset {start:g} s")
            events[index].append(Event(start, end, classes[label]))
    return [None if e is None else tuple(sorted(e)) for e in events]
