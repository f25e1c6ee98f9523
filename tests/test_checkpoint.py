"""Checkpoint files survive corruption and truncation by falling back a generation, loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.recording import checkpoint


def test_round_trip_and_two_generations(tmp_path: Path) -> None:
    checkpoint.write(tmp_path, {"seq": 1})
    checkpoint.write(tmp_path, {"seq": 2})
    loaded = checkpoint.load(tmp_path)
    assert loaded.state == {"seq": 2} and loaded.problems == []
    assert checkpoint.decode((tmp_path / checkpoint.PREVIOUS).read_bytes()) == {"seq": 1}
    assert not (tmp_path / (checkpoint.NEWEST + ".tmp")).exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated write
        lambda data: data.replace(b'"seq":2', b'"seq":9'),  # bit rot: checksum no longer matches
        lambda data: b"",  # empty file
        lambda data: b"\xff\xfe garbage",  # not text
    ],
)
def test_damaged_newest_falls_back_to_previous(tmp_path: Path, damage: object) -> None:
    checkpoint.write(tmp_path, {"seq": 1})
    checkpoint.write(tmp_path, {"seq": 2})
    newest = tmp_path / checkpoint.NEWEST
    newest.write_bytes(damage(newest.read_bytes()))  # type: ignore[operator]
    loaded = checkpoint.load(tmp_path)
    assert loaded.state == {"seq": 1}
    assert loaded.path.name == checkpoint.PREVIOUS
    assert loaded.problems and loaded.problems[0].startswith(checkpoint.NEWEST)


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    checkpoint.write(tmp_path, {"seq": 1})
    (tmp_path / checkpoint.NEWEST).write_bytes(b"{")
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint"):
        checkpoint.load(tmp_path)


def test_crash_between_renames_leaves_the_previous(tmp_path: Path) -> None:
    checkpoint.write(tmp_path, {"seq": 1})
    checkpoint.write(tmp_path, {"seq": 2})
    # killed during a third write: temp written, newest already moved to previous, not yet replaced
    (tmp_path / (checkpoint.NEWEST + ".tmp")).write_bytes(checkpoint.encode({"seq": 3})[:10])
    (tmp_path / checkpoint.NEWEST).replace(tmp_path / checkpoint.PREVIOUS)
    loaded = checkpoint.load(tmp_path)
    assert loaded.state == {"seq": 2}
    assert loaded.problems == [f"{checkpoint.NEWEST}: missing"]


def test_a_write_cut_between_its_renames_is_taken_whole_from_its_temporary_file(tmp_path: Path) -> None:
    """Found by an audit: killed after its temporary file was written and fsynced and the newest
    moved to previous, before the temporary file became the newest, a write left a resume one
    generation back (a fill the temporary file held was undone). That file is the newest."""
    checkpoint.write(tmp_path, {"seq": 1})
    checkpoint.write(tmp_path, {"seq": 2})
    (tmp_path / (checkpoint.NEWEST + ".tmp")).write_bytes(
        checkpoint.encode({"seq": 3}, tmp_path.resolve().name)
    )
    (tmp_path / checkpoint.NEWEST).replace(tmp_path / checkpoint.PREVIOUS)
    loaded = checkpoint.load(tmp_path)
    assert (loaded.state, loaded.path.name) == ({"seq": 3}, checkpoint.NEWEST + ".tmp")
    assert "taken whole from checkpoint.json.tmp" in loaded.problems[0]
    # and the next write goes on from there: newest, with the previous kept
    checkpoint.write(tmp_path, {"seq": 4})
    assert checkpoint.load(tmp_path).state == {"seq": 4}
    assert checkpoint.decode((tmp_path / checkpoint.PREVIOUS).read_bytes(), tmp_path.resolve().name) == {
        "seq": 2
    }


def test_the_very_first_write_cut_before_its_rename_is_no_checkpoint(tmp_path: Path) -> None:
    """Its folder has no checkpoint file but the temporary one: a start closes it as abandoned
    (`has_checkpoint`), so no load may take it for one (found by CI: a test's session, killed the
    moment its checkpoint loaded, was then closed as abandoned instead of resumed)."""
    first = checkpoint.encode({"seq": 1}, tmp_path.resolve().name)
    (tmp_path / (checkpoint.NEWEST + ".tmp")).write_bytes(first)
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint"):
        checkpoint.load(tmp_path)
