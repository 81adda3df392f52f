"""The board profile library: every board finds its profile, and the candidate space it gives."""

from dataclasses import replace

import pytest

from appliance.hardware.library import LibraryError, parse_library, read_library
from appliance.hardware.machine import Machine
from appliance.hardware.tuner import candidate_space, default_candidate
from tests.hardware.test_probe import probe_board

LIBRARY = read_library()


def machine(board: str, arch: str = "aarch64", cores: int = 4) -> Machine:
    return Machine(board=board, arch=arch, soc=None, cpu="Cortex-A72", cores=cores)


@pytest.mark.parametrize(
    ("board", "profile"),
    [
        ("pi-zero-2w", "pi-zero-2w"),
        ("pi3", "pi3"),
        ("pi4", "pi4"),
        ("pi5", "pi5"),
        ("x86-laptop", "x86"),
    ],
)
def test_each_recorded_board_gets_its_profile(board: str, profile: str) -> None:
    assert LIBRARY.lookup(probe_board(board)).id == profile


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("Raspberry Pi 400 Rev 1.0", "pi400"),
        ("Raspberry Pi 4 Model B Rev 1.5", "pi4"),
        ("Raspberry Pi Compute Module 4 Rev 1.0", "cm4"),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3"),
        ("Raspberry Pi 3 Model A Plus Rev 1.1", "pi3"),
        ("Pine64 RockPro64", "generic"),
    ],
)
def test_model_strings_pick_the_longest_matching_prefix(model: str, profile: str) -> None:
    assert LIBRARY.lookup(machine(model)).id == profile


def test_every_board_the_issue_names_is_in_the_library() -> None:
    ids = {p.id for p in LIBRARY.board}
    assert {"pi-zero-2w", "pi3", "pi4", "pi400", "cm4", "pi5", "x86", "generic"} <= ids
    for profile in LIBRARY.board:
        assert profile.memory_budget_mib > 0 and profile.throttle_temp_c < profile.max_temp_c


def test_one_core_is_left_free_by_default() -> None:
    pi4 = LIBRARY.by_id("pi4")
    assert pi4.thread_candidates(4) == (1, 2, 3)
    assert pi4.thread_candidates(4, use_all_cores=True) == (1, 2, 3, 4)
    assert pi4.thread_candidates(1) == (1,)
    assert LIBRARY.by_id("x86").thread_candidates(2) == (1,)
    assert LIBRARY.by_id("x86").thread_candidates(8) == (1, 2, 3, 4, 6)


def test_candidate_space_starts_with_the_runtime_default() -> None:
    space = candidate_space(LIBRARY.by_id("pi4"), 4, ["ai-edge-litert"])
    assert space[0] == default_candidate("ai-edge-litert")
    assert len(space) == len(set(space)) == 3 * 2 * 4  # threads x xnnpack x batches
    assert {c.threads for c in space} == {1, 2, 3}


def test_the_legacy_runtime_is_only_tried_with_its_default_resolver() -> None:
    space = candidate_space(LIBRARY.by_id("pi3"), 4, ["ai-edge-litert", "tflite-runtime"])
    legacy = [c for c in space if c.runtime == "tflite-runtime"]
    assert legacy and all(c.xnnpack for c in legacy)


def test_quick_space_keeps_the_extremes() -> None:
    space = candidate_space(LIBRARY.by_id("pi5"), 4, ["ai-edge-litert"], quick=True)
    assert {(c.threads, c.batch) for c in space} == {(1, 1), (1, 4), (3, 1), (3, 4)}


def test_the_library_is_strict() -> None:
    with pytest.raises(LibraryError, match="threads"):
        parse_library('[[board]]\nid = "x"\nname = "x"\nthreads = "many"\n')
    with pytest.raises(LibraryError):
        parse_library("[[board]\n")


def test_architecture_matches_when_no_model_string_does() -> None:
    laptop = replace(machine("Dell Inc. XPS 13", arch="x86_64"))
    assert LIBRARY.lookup(laptop).id == "x86"
