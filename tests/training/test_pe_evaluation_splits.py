"""The PE evaluation's held-out splits never share a seed with each other or with training."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from training.pe import evaluate, train_defect_cnn, train_defects
from training.pe.train import TRAIN_SEED_BASE
from training.pe.train_defects import DEFECT_SCANS_MAX, DEFECT_SEED_BASE
from training.pe.train_levels import SEED_BASE as LEVEL_SEED_BASE

TRAINING_SCANS_MAX = DEFECT_SCANS_MAX
"""The most scans any training set is drawn with (the second stage's 1,200 in the fourteenth
session is the largest so far)."""


def test_no_two_splits_or_training_sets_share_a_seed() -> None:
    spans = [(base, base + evaluate.SPLIT_SCANS_MAX) for base in evaluate.SPLITS.values()]
    spans += [
        (base, base + TRAINING_SCANS_MAX)
        for base in (TRAIN_SEED_BASE, DEFECT_SEED_BASE, LEVEL_SEED_BASE)
    ]
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    assert {"validation", "confirmation", "tuning", "test"} <= set(evaluate.SPLITS)


@pytest.mark.parametrize("scans", ["0", str(evaluate.SPLIT_SCANS_MAX + 1)])
def test_a_split_is_never_drawn_beyond_its_own_seeds(scans: str) -> None:
    with pytest.raises(SystemExit):
        evaluate.main(["--split", "tuning", "--scans", scans])


@pytest.mark.parametrize("main", [train_defect_cnn.main, train_defects.main])
@pytest.mark.parametrize("scans", ["0", str(DEFECT_SCANS_MAX + 1)])
def test_the_second_stage_is_never_trained_beyond_its_own_seeds(
    main: Callable[[list[str] | None], None], scans: str
) -> None:
    with pytest.raises(SystemExit):
        main(["--scans", scans])
