"""A table larger than --cache-budget streams from its file (tfpipeline.data.tablestream, put
together by tfpipeline.data.table.load_streamed): the same column types and statistics as the
table read into memory, splits carved per row,
each split cached on disk, bad rows still counted; and a worker's share of the training rows
(`shard`) with statistics identical on every worker."""

from __future__ import annotations

import numpy as np
import pytest
from test_table import mixed_rows, write

from tfpipeline.data import table, tablestream
from tfpipeline.errors import UserError


def folder(tmp_path, n: int = 300):
    """train/validation/test files: both paths read the same rows into the same splits."""
    header, rows = mixed_rows(n)
    root = tmp_path / "t"
    root.mkdir()
    write(root / "train.csv", header, rows[: n // 2])
    write(root / "validation.csv", header, rows[n // 2: 3 * n // 4])
    write(root / "test.csv", header, rows[3 * n // 4:])
    return root


def test_a_table_over_the_budget_streams_with_the_same_columns(tmp_path, capsys):
    root = folder(tmp_path)
    memory = table.load_table(root, "label")
    streamed = table.load_table(root, "label", cache_budget=1, work_dir=tmp_path / "work")
    assert memory.spec.source["read"] == "memory" and memory.spec.source["cache"]["kind"] == "memory"
    assert streamed.spec.source["read"] == "stream" and streamed.spec.source["cache"]["kind"] == "disk"
    assert "exceeds --cache-budget" in capsys.readouterr().out
    # One chunk of training rows: the same arithmetic gives the same fitted columns, exactly.
    assert streamed.spec.input.columns == memory.spec.input.columns
    assert streamed.spec.num_examples == memory.spec.num_examples
    for role in ("train", "validation", "test"):
        (fm, lm), (fs, ls) = table.arrays(getattr(memory, role)), table.arrays(getattr(streamed, role))
        np.testing.assert_array_equal(lm, ls)
        for name in fm:
            np.testing.assert_array_equal(fm[name], fs[name])
    cache = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "work").rglob("*.index"))
    assert cache == ["test.index", "train.index", "validation.index"]
    # Read again: from the disk cache, with the same examples.
    np.testing.assert_array_equal(table.arrays(streamed.train)[1], table.arrays(memory.train)[1])


def test_streamed_statistics_over_many_chunks_match(tmp_path, monkeypatch):
    root = folder(tmp_path, 600)
    memory = table.load_table(root, "label")
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 7)  # the training split fitted in 43 merged chunks
    streamed = table.load_table(root, "label", cache_budget=1, work_dir=tmp_path / "work")
    for m, s in zip(memory.spec.input.columns, streamed.spec.input.columns):
        assert (m.role, m.dtype, m.vocabulary, m.missing, m.missing_code) == (s.role, s.dtype, s.vocabulary,
                                                                               s.missing, s.missing_code)
        assert s.mean == pytest.approx(m.mean, rel=1e-9, abs=1e-12) and s.std == pytest.approx(m.std, rel=1e-9)


def test_a_streamed_file_is_carved_per_row_and_counts_bad_rows(tmp_path):
    header, rows = mixed_rows(400)
    rows[5] = rows[5][:-2]  # wrong number of fields
    rows[9][1] = "abc"  # not a number in the numeric column x
    rows[12][-1] = "NA"  # no label
    path = write(tmp_path / "m.csv", header, rows)
    memory = table.load_table(path, "label")
    streamed = table.load_table(path, "label", cache_budget=1, work_dir=tmp_path / "work")
    source = streamed.spec.source
    assert source["skipped"]["count"] == memory.spec.source["skipped"]["count"] == 2
    assert source["skipped"]["rows"][0].startswith("line 7:")
    assert source["unparseable"]["counts"] == memory.spec.source["unparseable"]["counts"] == {"x": 1}
    assert source["split"]["stratified"] is False and "sha256(seed:line number)" in source["split"]["rule"]
    assert sum(streamed.spec.num_examples.values()) == 398 == sum(memory.spec.num_examples.values())
    assert 50 <= streamed.spec.num_examples["test"] <= 110  # a hash share of about 20%
    assert [c.role for c in streamed.spec.input.columns] == [c.role for c in memory.spec.input.columns]
    assert [c.detected for c in streamed.spec.input.columns] == [c.detected for c in memory.spec.input.columns]
    x = {c.name: c for c in streamed.spec.input.columns}["x"]
    assert abs(x.mean) < 0.3 and 0.7 < x.std < 1.3 and x.unparseable >= 0
    assert source["types_from"]["sample_rows"] == streamed.spec.num_examples["train"]
    # Seeded: the same carve again; another seed, another carve.
    again = table.load_table(path, "label", cache_budget=1, work_dir=tmp_path / "work2")
    other = table.load_table(path, "label", seed=7, cache_budget=1, work_dir=tmp_path / "work3")
    assert again.spec.num_examples == streamed.spec.num_examples and again.spec.version == streamed.spec.version
    assert other.spec.version != streamed.spec.version


def test_the_type_sample_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(tablestream, "SAMPLE_ROWS", 50)
    path = write(tmp_path / "m.csv", *mixed_rows(400))
    streamed = table.load_table(path, "label", cache_budget=1, work_dir=tmp_path / "work")
    assert streamed.spec.source["types_from"]["sample_rows"] == 50
    kinds = {c.name: c.detected for c in streamed.spec.input.columns}
    assert kinds["x"] == "number" and kinds["colour"] == "string" and kinds["code"] == "integer code"
    # Statistics come from every training row, not the sample.
    assert sum(streamed.spec.source["label_counts"]["train"].values()) == streamed.spec.num_examples["train"]


@pytest.mark.parametrize("budget", [None, 1])
def test_two_shards_partition_the_training_split(tmp_path, budget):
    header, rows = mixed_rows(200)
    path = write(tmp_path / "m.csv", ["u", *header], [[f"{i}.5", *row] for i, row in enumerate(rows)])
    whole = table.load_table(path, "label", cache_budget=budget, work_dir=tmp_path / "work")
    shares = [table.load_table(path, "label", cache_budget=budget, work_dir=tmp_path / "work", shard=(i, 2))
              for i in range(2)]
    ids = [set(table.arrays(s.train)[0]["u"].tolist()) for s in shares]  # u: distinct per row
    rows = [len(table.arrays(s.train)[1]) for s in shares]
    assert rows == [s.spec.source["shard"]["rows"] for s in shares] == [int(s.train.cardinality()) for s in shares]
    assert sum(rows) == whole.spec.num_examples["train"] and abs(rows[0] - rows[1]) <= 1
    whole_x = table.arrays(whole.train)[0]["u"]
    assert ids[0].isdisjoint(ids[1]) and len(whole_x) == sum(rows)
    both = np.sort(np.concatenate([table.arrays(s.train)[0]["u"] for s in shares]))
    np.testing.assert_array_equal(both, np.sort(whole_x))
    # Statistics, vocabularies and class weights: the whole training split's, on every worker.
    assert shares[0].spec.input.columns == shares[1].spec.input.columns == whole.spec.input.columns
    weights = [table.balanced(s, s.train)[1] for s in shares]
    assert weights[0] == weights[1] == pytest.approx(table.balanced(whole, whole.train)[1])
    for s in shares:  # the other splits are not shared out
        assert len(table.arrays(s.test)[1]) == whole.spec.num_examples["test"]


def test_streamed_table_trains_and_gives_the_baseline_a_bounded_sample(tmp_path, monkeypatch):
    import keras

    from tfpipeline import models

    path = write(tmp_path / "m.csv", *mixed_rows(300))
    data = table.load_table(path, "label", cache_budget=1, work_dir=tmp_path / "work")
    monkeypatch.setattr(table, "BASELINE_ROWS", 40)
    train, test, record = table.baseline_arrays(data)
    assert record["train_rows"] == len(train[1]) <= 40 and record["of"] == data.spec.num_examples["train"]
    assert len(test[1]) == data.spec.num_examples["test"]
    from tfpipeline.report import baseline

    trees = baseline.for_datasets(data)  # trained on the sample, and says so
    assert (trees.num_train, trees.train_of) == (record["train_rows"], record["of"]) and "every" in trees.train_rule
    assert trees.num_test == len(test[1]) and 0 <= trees.accuracy <= 1
    keras.utils.set_random_seed(0)
    model = models.build("mlp", data.spec.input_shape, 2, models.hyperparams("mlp", {"units": 16}, kind="table"),
                         input=data.spec.input)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    batches = data.batched(data.train, batch_size=32, seed=0, training=True)
    history = model.fit(batches, epochs=2, verbose=0, validation_data=data.batched(
        data.validation, batch_size=64, seed=0, training=False))
    assert np.isfinite(history.history["loss"][-1])
    keras.backend.clear_session()


@pytest.mark.parametrize("case", ["no label column", "one class", "empty", "header only", "bad rows only"])
def test_bad_input_is_a_user_error_when_streamed_too(tmp_path, case):
    path = tmp_path / "t.csv"
    if case == "no label column":
        write(path, ["a", "b"], [[1, 2], [3, 4]])
    elif case == "one class":
        write(path, ["a", "label"], [[i, "x"] for i in range(20)])
    elif case == "empty":
        path.write_text("")
    else:
        path.write_text("a,label\n" + ("1,2,3\n" if case == "bad rows only" else ""))
    expected = {"no label column": "label column 'label' is not in .*its columns are: a, b",
                "one class": "only one class", "empty": "is empty", "header only": "no data rows",
                "bad rows only": "no data rows that could be read"}[case]
    with pytest.raises(UserError, match=expected):
        table.load_table(path, "label", cache_budget=1, work_dir=tmp_path / "work")


def test_data_load_passes_the_budget_work_dir_and_shard_to_tables(tmp_path):
    from tfpipeline import data

    path = write(tmp_path / "m.csv", *mixed_rows(100))
    loaded = data.load(str(path), kind="table", label_column="label", cache_budget=1, work_dir=tmp_path / "work",
                       shard=(1, 2), seed=3, validation_fraction=0.25, quick=False)
    assert loaded.spec.source["read"] == "stream" and loaded.spec.source["shard"]["worker"] == 1
    assert str(tmp_path / "work") in loaded.spec.source["cache"]["directory"]
