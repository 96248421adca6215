"""Text over --cache-budget: a corpus whose texts exceed the budget streams from its files and is
cached on disk, with the same documents in each split, the same `spec.version` and the same
vocabulary as in memory; bad files are still counted; two workers' shares of the training split
are disjoint and together the whole split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from test_text import documents, write_folder, write_table

from tfpipeline.data import text

TINY = 200  # bytes: every corpus here exceeds it


def unique_documents(n_per_class: int, seed: int) -> list[tuple[str, str]]:
    """`documents`, each made distinct (a number at the end), so shares can be told apart."""
    return [(name, f"{body} n{i}") for i, (name, body) in enumerate(documents(n_per_class, seed))]


def examples(dataset) -> Counter:
    return Counter((x.numpy().decode(), int(y.numpy())) for x, y in dataset)


def splits(datasets) -> dict[str, Counter]:
    return {role: examples(getattr(datasets, role)) for role in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = write_folder(tmp_path_factory.mktemp("stream") / "flat", unique_documents(25, seed=5))
    (root / "space" / "bom.txt").write_bytes("\ufeffRocket orbit moon.\r\nA second line.".encode())
    (root / "space" / "empty.txt").write_bytes(b" \n")
    (root / "cooking" / "image.txt").write_bytes(b"\x89PNG\x00\x00")
    (root / "sports" / "latin1.txt").write_bytes("caf\xe9 goal".encode("latin-1"))
    return root


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = write_table(tmp_path_factory.mktemp("stream") / "topics.csv", unique_documents(25, seed=6))
    with path.open("a", encoding="utf-8", newline="") as f:
        f.write('99,"",space\r\n100,"a quoted, multi-line\r\nrow about the moon",space\r\n')
    return path


@pytest.mark.parametrize("layout", ["folder", "table"])
def test_over_the_budget_streams_from_disk_with_the_same_examples_and_version(
        layout, folder, table, tmp_path, capsys):
    path = folder if layout == "folder" else table
    kwargs = {"text_column": "body", "label_column": "topic"} if layout == "table" else {}
    memory = text.load(path, seed=2, work_dir=tmp_path, verbose=False, **kwargs)
    disk = text.load(path, seed=2, work_dir=tmp_path, cache_budget=TINY, **kwargs)
    said = capsys.readouterr().out
    assert memory.in_memory and memory.spec.source["cache"]["kind"] == "memory"
    assert not disk.in_memory and disk.cache_plan.kind == "disk" and disk.spec.source["cache"]["kind"] == "disk"
    assert "exceeds --cache-budget" in said and "caching it on disk in" in said
    assert disk.spec.version == memory.spec.version
    assert disk.spec.num_examples == memory.spec.num_examples
    assert disk.spec.source["skipped"] == memory.spec.source["skipped"]
    assert disk.spec.input == memory.spec.input  # the vocabulary fitted from the stream
    assert splits(disk) == splits(memory)
    cached = Path(disk.cache_plan.directory)
    assert {p.name for p in cached.glob("*.index")} >= {"train.index", "validation.index", "test.index"}
    assert splits(disk) == splits(memory)  # read again, from the cache files
    if layout == "folder":  # the byte-order mark is dropped, as in memory; the bad files are counted
        assert ("Rocket orbit moon.\r\nA second line.", disk.spec.class_names.index("space")) in sum(
            splits(disk).values(), Counter())
        assert disk.spec.source["skipped"]["by_reason"] == {
            "empty": 1, "binary (holds NUL bytes)": 1, "not valid UTF-8": 1}
    else:
        assert disk.spec.source["skipped"]["by_reason"] == {"empty": 1}


def test_quick_streams_the_same_subset(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(text, "QUICK_EXAMPLES", {"train": 20, "validation": 3})
    memory = text.load(folder, quick=True, work_dir=tmp_path, verbose=False)
    disk = text.load(folder, quick=True, work_dir=tmp_path, cache_budget=TINY, verbose=False)
    assert disk.spec.num_examples == memory.spec.num_examples and disk.spec.num_examples["train"] == 20
    assert disk.spec.version == memory.spec.version
    assert splits(disk) == splits(memory)  # the same subset, not another 20 documents


@pytest.mark.parametrize("layout", ["folder", "table"])
def test_two_shards_partition_the_training_split(layout, folder, table, tmp_path):
    path = folder if layout == "folder" else table
    kwargs = {"text_column": "body", "label_column": "topic"} if layout == "table" else {}
    whole = text.load(path, seed=2, work_dir=tmp_path, cache_budget=TINY, verbose=False, **kwargs)
    shares = [text.load(path, seed=2, work_dir=tmp_path, cache_budget=TINY, shard=(i, 2), verbose=False, **kwargs)
              for i in range(2)]
    first, second = (examples(s.train) for s in shares)
    assert not set(first) & set(second)  # disjoint (every document here is distinct)
    assert first + second == examples(whole.train)  # together the whole split
    assert abs(sum(first.values()) - sum(second.values())) <= 1
    for i, share in enumerate(shares):
        assert share.spec.source["shard"]["worker"] == i and share.spec.source["shard"]["workers"] == 2
        assert share.spec.source["shard"]["documents"] == sum((first, second)[i].values())
        assert share.spec.input == whole.spec.input  # the same vocabulary on every worker
        assert share.spec.version == whole.spec.version
        assert share.spec.num_examples == whole.spec.num_examples  # the whole split: the same steps per epoch
        assert examples(share.validation) == examples(whole.validation)
    in_memory = text.load(path, seed=2, work_dir=tmp_path, shard=(0, 2), verbose=False, **kwargs)
    assert "shard" not in in_memory.spec.source  # in memory every worker reads the whole split


def test_a_streamed_split_batches_with_a_bounded_shuffle_buffer(folder, tmp_path):
    disk = text.load(folder, work_dir=tmp_path, cache_budget=TINY, verbose=False)
    batches = disk.batched(disk.train, batch_size=8, seed=0, training=True)
    seen = Counter()
    for x, y in batches:
        seen.update(zip((t.decode() for t in x.numpy()), y.numpy().tolist()))
    assert seen == examples(disk.train)
