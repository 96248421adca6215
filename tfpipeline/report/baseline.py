"""The gradient-boosted tree baseline that a table's neural network is measured against.

Gradient-boosted trees are what a tabular user tries first, and they often win on tables, so
every table run trains scikit-learn's `HistGradientBoostingClassifier` on the same training
split and scores it on the same test split, and the run reports both. It reads the same
columns the network reads, as the table spec describes them: numbers as they are (NaN for
missing values, which the trees handle natively), categories as ordinal codes over the
training vocabulary with native categorical splits (an unseen or missing value is NaN). Its
own defaults, with early stopping on a part of the training split, as a user would run it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

#: scikit-learn's native categorical support takes at most this many categories per feature.
MAX_CATEGORIES = 255


@dataclasses.dataclass
class Baseline:
    model: str
    accuracy: float
    macro_f1: float
    seconds: float
    num_test: int
    # The training rows the trees saw: all of a table read into memory; an evenly spread sample
    # of a streamed one (`train_rule` says which), or a multi-worker chief's share.
    num_train: int = 0
    train_of: int = 0
    train_rule: str = "the whole training split"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def matrix(table, features: dict[str, np.ndarray]) -> tuple[np.ndarray, list[bool]]:
    """The feature columns of `table` (a `TableInput`) as a float matrix and which are categorical."""
    columns, categorical = [], []
    for c in table.features:
        values = features[c.name]
        if c.role == "numeric":
            columns.append(np.asarray(values, dtype=np.float64))
            categorical.append(False)
            continue
        index = {v: i for i, v in enumerate(c.vocabulary[:MAX_CATEGORIES])}
        columns.append(np.array([index.get(v.item() if hasattr(v, "item") else v, np.nan) for v in values],
                                dtype=np.float64))
        categorical.append(True)
    return np.stack(columns, axis=1), categorical


def gradient_boosting(table, train: tuple[dict, np.ndarray], test: tuple[dict, np.ndarray], seed: int = 42
                      ) -> Baseline:
    """Train `HistGradientBoostingClassifier` on `train` and score it on `test`.

    Args:
        table: the dataset's `TableInput`.
        train, test: (feature dict, label indices), as `tfpipeline.data.table.examples` gives them.
        seed: the trees' random state (their early-stopping split).

    Returns:
        The baseline's test accuracy and macro F1.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score

    x_train, categorical = matrix(table, train[0])
    x_test, _ = matrix(table, test[0])
    start = time.perf_counter()
    trees = HistGradientBoostingClassifier(categorical_features=np.array(categorical), random_state=seed)
    trees.fit(x_train, train[1])
    predicted = trees.predict(x_test)
    return Baseline("HistGradientBoostingClassifier", float((predicted == test[1]).mean()),
                    float(f1_score(test[1], predicted, average="macro")), time.perf_counter() - start,
                    int(len(test[1])))


def for_datasets(datasets, seed: int = 42) -> Baseline:
    """The baseline on a table's `Datasets` (`tfpipeline.data.table.load_table`): trained on its
    training split (a bounded, evenly spread sample of a streamed table's), scored on its test split."""
    from tfpipeline.data.table import baseline_arrays

    train, test, record = baseline_arrays(datasets)
    result = gradient_boosting(datasets.spec.input, train, test, seed)
    shard = datasets.spec.source.get("shard")
    rule = record.get("rule") or (f"this worker's share of the training rows ({shard})" if shard else
                                  "the whole training split")
    return dataclasses.replace(result, num_train=record["train_rows"], train_of=record["of"], train_rule=rule)
