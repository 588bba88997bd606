"""Strong labels: DCASE event TSVs matched to a datafile's clips, and the errors that name the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aum_jax.data.records import Event
from aum_jax.data.sources import events
from aum_jax.data.sources.datafile import DatafileSource


def write_split(root: Path, tsv_rows: list[str], labels: tuple[str, ...] = ("/m/a", "", "/m/b", "")) -> tuple[Path, Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("index,mid,display_name\n0,/m/a,Dog\n1,/m/b,Speech\n")
    entries = [{"wav": f"audio/clip{i}.wav", "labels": label} for i, label in enumerate(labels)]
    (root / "train.json").write_text(json.dumps({"data": entries}))
    (root / "train.tsv").write_text("filename\tonset\toffset\tevent_label\n" + "".join(r + "\n" for r in tsv_rows))
    return root / "train.json", root / "labels.csv", root / "train.tsv"


def test_named_clips_get_their_events_and_the_others_keep_clip_labels(tmp_path):
    datafile, labels, tsv = write_split(tmp_path, [
        "audio/clip0.wav\t1.5\t2.0\tDog", "clip0.wav\t0.25\t0.5\t/m/a",  # a bare file name, a mid
        "audio/clip1.wav\t\t\t",  # named with no event: strongly labelled, nothing happens
        "audio/clip2.wav\t3\t4.5\tSpeech"])
    source = DatafileSource(datafile, labels, tsv)
    records = [source[i] for i in range(len(source))]
    assert records[0].events == (Event(0.25, 0.5, 0), Event(1.5, 2.0, 0)) and records[0].labels == (0,)
    assert records[1].events == () and records[1].labels == ()
    assert records[2].events == (Event(3.0, 4.5, 1),) and records[2].labels == (1,)
    assert records[3].events is None  # not named: its clip labels alone
    assert source.num_unlabelled == 1  # clip 3: no labels and no events; clip 1's "no event" is a label


@pytest.mark.parametrize("row, fragment", [
    ("audio/none.wav\t1\t2\tDog", "row 2: 'audio/none.wav' is not one clip of the split"),
    ("audio/clip0.wav\t1\t2\tCat", "row 2: event_label 'Cat' is not a class"),
    ("audio/clip0.wav\t2\t1\tDog", "row 2: offset 1 s is not after onset 2 s"),
    ("audio/clip0.wav\tsoon\t1\tDog", "row 2: onset 'soon' is not a number of seconds"),
    ("audio/clip0.wav\t-1\t1\tDog", "row 2: onset '-1' must be a finite number"),
])
def test_a_bad_row_is_named(tmp_path, row, fragment):
    datafile, labels, tsv = write_split(tmp_path, [row])
    with pytest.raises(events.EventsError, match="train.tsv, " + fragment.replace("(", r"\(")):
        DatafileSource(datafile, labels, tsv)


def test_a_missing_column_and_labels_that_disagree_are_refused(tmp_path):
    datafile, labels, tsv = write_split(tmp_path, [])
    tsv.write_text("filename\tonset\tevent_label\n")
    with pytest.raises(events.EventsError, match="no column offset"):
        DatafileSource(datafile, labels, tsv)
    datafile, labels, tsv = write_split(tmp_path, ["audio/clip0.wav\t1\t2\tSpeech"])  # the datafile says /m/a
    with pytest.raises(events.EventsError, match=r"clip .*clip0.wav has labels \[0\] but its events"):
        DatafileSource(datafile, labels, tsv)


def test_the_split_events_key_is_a_needed_file(tmp_path):
    import ml_collections

    data = ml_collections.ConfigDict({"train_datafile": "a.json", "label_csv": "l.csv", "train_events": "a.tsv",
                                      "test_datafile": "b.json", "test_events": ""})
    needed = DatafileSource.needed_files(data, ["train", "test"])
    assert ("train_events", "a.tsv", "train events TSV") in needed
    assert not any(key == "test_events" for key, _, _ in needed)
