"""Cross-validation folds: disjoint, covering, balanced by size and by the classes each image holds, reproducible."""

import numpy as np
import pytest

import segdata
from segdata.check import class_presence
from segdata.folds import assign_folds, make_folds


def _presence(n: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    presence = rng.random((n, classes)) < np.linspace(0.1, 0.6, classes)  # rare to common classes
    presence[:, 0] = True  # background everywhere
    return presence


@pytest.mark.parametrize(("n", "k"), [(25, 5), (70, 5), (14, 4), (7, 7)])
def test_folds_are_disjoint_cover_the_split_and_balance_sizes_and_classes(n, k):
    presence = _presence(n, 11, seed=n)
    fold = np.asarray(assign_folds(presence, k, seed=0))
    assert sorted(set(fold.tolist())) == list(range(k))  # every image in exactly one fold, every fold used
    sizes = np.bincount(fold, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    for c in range(presence.shape[1]):  # each class's images spread as evenly as the fold sizes allow
        per_fold = np.bincount(fold[presence[:, c]], minlength=k)
        assert per_fold.max() - per_fold.min() <= max(2, presence[:, c].sum() // (2 * k) + 1), (c, per_fold)


def test_a_rare_class_lands_in_as_many_folds_as_it_has_images():
    presence = np.zeros((20, 3), bool)
    presence[:, 0] = True
    presence[[2, 9, 13], 2] = True  # three images hold the rare class: three folds validate on it
    presence[::2, 1] = True
    fold = np.asarray(assign_folds(presence, 4, seed=3))
    assert len(set(fold[presence[:, 2]].tolist())) == 3


def test_folds_are_reproducible_and_the_seed_changes_them():
    presence = _presence(30, 5, seed=1)
    assert assign_folds(presence, 5, seed=7) == assign_folds(presence, 5, seed=7)
    assert assign_folds(presence, 5, seed=7) != assign_folds(presence, 5, seed=8)


def test_impossible_fold_counts_are_refused_in_one_line():
    with pytest.raises(segdata.DataError, match="6 folds of 5 training images: use 2 to 5 folds"):
        assign_folds(np.ones((5, 2), bool), 6, seed=0)


def test_make_folds_reads_the_labels_and_returns_names(tmp_path):
    from engine_helpers import write_shapes_dataset

    root = write_shapes_dataset(tmp_path / "shapes", n_train=9, n_val=2)
    folder = segdata.open_dataset(str(root))
    samples = folder.samples("train")
    presence = class_presence(samples, folder.meta)
    assert presence.shape == (9, 3) and presence.all()  # every shapes image has background, lines and discs
    folds = make_folds(samples, folder.meta, 3, seed=0)
    assert sorted(n for f in folds for n in f) == sorted(s.name for s in samples)
    assert [len(f) for f in folds] == [3, 3, 3]
