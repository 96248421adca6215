"""Text input: the layouts and tables it reads, what it skips and refuses, the spec it fits, the
four text families, and a SavedModel that takes raw strings and reloads with plain TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline import inputs, models
from tfpipeline import signatures as names
from tfpipeline.data import text, textfiles
from tfpipeline.errors import UserError
from tfpipeline.inputs import textreport
from tfpipeline.inputs.text import TextInput

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT.parent / "shared" / "data" / "text" / "election-tweets-2016.tsv"
TOPICS = {
    "sports": "match goal team coach league score season player referee stadium",
    "cooking": "recipe oven flour butter simmer garlic onion sauce bake pepper",
    "space": "orbit rocket planet launch comet galaxy moon telescope astronaut star",
}
COMMON = "the a of and to in is it that with for on this was".split()


def documents(n_per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """(class, text) pairs: each text mixes its topic's words with common ones."""
    rng = np.random.default_rng(seed)
    out = []
    for name, words in TOPICS.items():
        topic = words.split()
        for _ in range(n_per_class):
            length = int(rng.integers(6, 20))
            chosen = [rng.choice(topic) if rng.random() < 0.4 else rng.choice(COMMON) for _ in range(length)]
            out.append((name, " ".join(chosen).capitalize() + "."))
    return out


def write_folder(root: Path, docs, prefix: str = "doc") -> Path:
    for i, (name, body) in enumerate(docs):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{prefix}{i:04d}.txt").write_text(body, encoding="utf-8")
    return root


def write_table(path: Path, docs, delimiter: str = ",") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["id", "body", "topic"])
        for i, (name, body) in enumerate(docs):
            writer.writerow([i, body, name])
    return path


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("flat"), documents(60))


@pytest.fixture(scope="module")
def flat_data(flat):
    return text.load(flat, seed=1, verbose=False)


# -- reading ----------------------------------------------------------------------------------

def test_flat_folder_is_carved_and_fits_a_spec(flat_data):
    spec = flat_data.spec
    assert spec.class_names == ("cooking", "space", "sports")
    assert sum(spec.num_examples.values()) == 180 and min(spec.num_examples.values()) > 0
    assert spec.source["layout"] == "flat folder" and spec.source["skipped"]["count"] == 0
    assert isinstance(spec.input, TextInput) and "orbit" in spec.input.vocabulary
    x, y = next(iter(flat_data.train))
    assert x.dtype == tf.string and x.shape == () and y.dtype == tf.int32


def test_carve_is_stable_when_files_are_added(tmp_path):
    root = write_folder(tmp_path / "d", documents(40))
    before = textfiles.read(root, validation_fraction=0.2, seed=3)
    write_folder(root, documents(40, seed=9), prefix="new")
    after = textfiles.read(root, validation_fraction=0.2, seed=3)
    for role in textfiles.ROLES:  # every old document stays in its split
        assert set(before.texts[role]) <= set(after.texts[role])
    other_seed = textfiles.read(root, validation_fraction=0.2, seed=4)
    assert other_seed.texts["test"] != after.texts["test"]


def test_split_folders_keep_their_splits(tmp_path):
    docs = documents(30)
    write_folder(tmp_path / "train", docs[::2])
    write_folder(tmp_path / "test", docs[1::2])
    data = textfiles.read(tmp_path, validation_fraction=0.1, seed=0)
    assert data.layout == "split folders"
    assert len(data.texts["test"]) == len(docs[1::2])
    assert len(data.texts["train"]) + len(data.texts["validation"]) == len(docs[::2])
    assert data.split_rule["carved"] == {"validation": 0.1}


def test_csv_with_named_and_detected_columns(tmp_path):
    path = write_table(tmp_path / "news.csv", documents(30))
    with pytest.raises(UserError, match="'body'.*'topic'"):  # `topic` is a label name, `body` a text one
        textfiles.read(path, validation_fraction=0.1, seed=0, text_column="nope")
    data = textfiles.read(path, validation_fraction=0.1, seed=0)
    assert data.columns == {"text": "body", "label": "topic"} and data.layout == "table"
    tsv = write_table(tmp_path / "news.tsv", documents(30), delimiter="\t")
    assert textfiles.read(tsv, validation_fraction=0.1, seed=0).texts == data.texts


def test_folder_of_split_tables(tmp_path):
    docs = documents(30)
    write_table(tmp_path / "train.csv", docs[::2])
    write_table(tmp_path / "test.csv", docs[1::2])
    datasets = text.load(tmp_path, text_column="body", label_column="topic", verbose=False)
    assert datasets.spec.source["layout"] == "split tables"
    assert datasets.spec.num_examples["test"] == len(docs[1::2])


def test_the_tweets_need_a_label_column_and_then_load():
    if not TWEETS.is_file():
        pytest.fail(f"The development tweets are needed for this test: {TWEETS} is missing.")
    with pytest.raises(UserError, match="'author'.*'is_retweet'"):
        textfiles.read(TWEETS, validation_fraction=0.1, seed=42)
    data = textfiles.read(TWEETS, validation_fraction=0.1, seed=42, label_column="author")
    assert data.class_names == ("HillaryClinton", "realDonaldTrump")
    assert sum(len(v) for v in data.texts.values()) + len(data.skipped) == 6444


# -- bad input --------------------------------------------------------------------------------

def test_bad_files_are_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / "d", documents(20))
    (root / "space" / "empty.txt").write_bytes(b"  \n")
    (root / "space" / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "sports" / "latin1.txt").write_bytes("caf\xe9 goal".encode("latin-1"))
    datasets = text.load(root, verbose=False)
    skipped = datasets.spec.source["skipped"]
    assert skipped["count"] == 3
    assert skipped["by_reason"] == {"empty": 1, "binary (holds NUL bytes)": 1, "not valid UTF-8": 1}
    assert sum(datasets.spec.num_examples.values()) == 60


@pytest.mark.parametrize("case", ["empty folder", "one class", "all files bad", "no label", "same column"])
def test_bad_datasets_are_user_errors(tmp_path, case):
    if case == "empty folder":
        (tmp_path / "d").mkdir()
        match = "no class folders"
    elif case == "one class":
        write_folder(tmp_path / "d", [d for d in documents(20) if d[0] == "space"])
        match = "at least two"
    elif case == "all files bad":
        for name in ("a", "b"):
            (tmp_path / "d" / name).mkdir(parents=True)
            (tmp_path / "d" / name / "x.txt").write_bytes(b"")
        match = "no usable documents"
    elif case == "no label":
        docs = documents(10) + [("", "an unlabelled row")]
        write_table(tmp_path / "d.csv", docs)
        match = "1 rows .* have no label"
    else:
        write_table(tmp_path / "d.csv", documents(10))
        match = "both name"
    path = tmp_path / ("d.csv" if case in ("no label", "same column") else "d")
    kwargs = {"text_column": "body", "label_column": "body"} if case == "same column" else {}
    with pytest.raises(UserError, match=match):
        text.load(path, verbose=False, **kwargs)


# -- the spec ---------------------------------------------------------------------------------

def test_spec_round_trips_through_metadata_json(flat_data):
    spec = flat_data.spec.input
    record = json.loads(json.dumps(flat_data.spec.to_json()))["input"]
    assert record["kind"] == "text" and record["sequence_length"] == spec.sequence_length
    assert record["vocabulary_size"] == len(spec.vocabulary) + 2
    again = inputs.from_json(record)
    assert again == spec
    assert again.vectorizer("int").get_vocabulary() == spec.vectorizer("int").get_vocabulary()


def test_sequence_length_is_a_percentile_and_truncation_is_said(capsys):
    docs = [("a", "word " * n) for n in range(1, 101)] + [("b", "other " * n) for n in range(1, 101)]
    spec = inputs.text.fit(tf.data.Dataset.from_tensor_slices([d[1] for d in docs]))
    assert spec.sequence_length == 96  # 95th percentile of 1..100 is 95.05, rounded up to 8s
    assert spec.stats["truncated_documents"] == 2 * 4
    assert "truncated to their first 96 words" in capsys.readouterr().out


# -- families and export ----------------------------------------------------------------------

@pytest.mark.parametrize("family", ["mlp", "cnn", "rnn", "transformer"])
def test_text_families_train_on_raw_strings(flat_data, family):
    import keras_tuner

    spec = flat_data.spec
    hp = models.search_space(family, keras_tuner.HyperParameters(), spec)
    assert hp == models.hyperparams(family, kind="text")  # the first trial is the defaults
    hp.epochs = 1
    keras.utils.set_random_seed(0)
    model = models.build(family, spec.input_shape, spec.num_classes, hp, input=spec.input)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(flat_data.train.batch(16), epochs=10, verbose=0)
    texts, labels = collect(flat_data.test)
    logits = model.predict(inputs.text.as_strings(texts), verbose=0)  # bytes from the dataset, as str
    assert logits.shape == (len(texts), 3)
    assert (logits.argmax(-1) == labels).mean() > 0.6


def collect(dataset):
    texts, labels = [], []
    for x, y in dataset.batch(64):
        texts.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(texts), np.concatenate(labels)


def test_image_families_are_unchanged():
    assert models.family("cnn") is models.FAMILIES["cnn"]
    assert models.family("cnn", "text") is not models.FAMILIES["cnn"]
    model = models.build("mlp", (28, 28, 1), 10)
    assert model.input.dtype == "uint8" and model.name == "mlp"


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_savedmodel_takes_raw_strings_and_reloads_with_plain_tensorflow(flat_data, tmp_path, family):
    spec = flat_data.spec.input
    keras.utils.set_random_seed(1)
    model = models.build(family, (), 3, input=spec)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(flat_data.train.batch(16), epochs=1, verbose=0)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, function in spec.signatures(model).items():
        archive.add_endpoint(name, function)
    archive.write_out(str(tmp_path / "1"), verbose=False)

    texts, _ = collect(flat_data.test)
    texts = np.concatenate([inputs.text.as_strings(texts),
                            ["zyzzyva quux never seen words", "", "ORBIT!!! rocket, Launch?"]])
    serve = tf.saved_model.load(str(tmp_path / "1")).signatures[names.DEFAULT]
    assert set(serve.structured_input_signature[1]) == {names.TEXT}
    assert serve.structured_input_signature[1][names.TEXT].dtype == tf.string
    got = serve(**{k: tf.constant(v) for k, v in spec.request(texts).items()})
    expected = tf.nn.softmax(model(texts, training=False), -1).numpy()
    np.testing.assert_array_equal(got[names.PROBABILITIES].numpy(), expected)
    np.testing.assert_array_equal(got[names.CLASSES].numpy(), expected.argmax(-1))


# -- predict and report -----------------------------------------------------------------------

def test_read_takes_files_and_strings(flat_data, tmp_path):
    spec = flat_data.spec.input
    (tmp_path / "a.txt").write_text("rocket orbit", encoding="utf-8")
    labels, request = spec.read([str(tmp_path / "a.txt"), "butter and flour"], {names.TEXT: None})
    assert list(request[names.TEXT]) == ["rocket orbit", "butter and flour"] and labels[1] == "butter and flour"
    with pytest.raises(UserError, match="No such text file"):
        spec.read([str(tmp_path / "missing.txt")], {names.TEXT: None})
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        spec.read([str(tmp_path / "bad.txt")], {names.TEXT: None})
    assert "hash table" in spec.tflite_refusal()


@pytest.mark.parametrize("family", ["mlp", "rnn"])
def test_attributions_mark_the_words_that_decide(flat_data, tmp_path, family):
    spec = flat_data.spec.input
    keras.utils.set_random_seed(0)
    model = models.build(family, (), 3, input=spec)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(flat_data.train.batch(16), epochs=10, verbose=0)
    doc = "The rocket and the moon, with a telescope!"
    (scores,), (cls,), _ = textreport.integrated_gradients(model, np.array([doc], dtype=object))
    assert flat_data.spec.class_names[cls] == "space" and scores.shape == (8,)
    words = doc.split()
    assert set(np.array(words)[np.argsort(-scores)[:3]]) & {"rocket", "moon,", "telescope!"}
    line = spec.explain(model, doc, tmp_path / "why.html", flat_data.spec.class_names)
    assert line.startswith("space") and "<span" in (tmp_path / "why.html").read_text()


def test_samples_and_mistakes_go_to_tensorboard(flat_data, tmp_path):
    spec = flat_data.spec.input
    texts, labels = collect(flat_data.test)
    probabilities = np.eye(3)[(labels + 1) % 3] * 0.9 + 0.03  # every one a confident mistake
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        spec.log_samples("test", texts, labels, probabilities, flat_data.spec.class_names, step=0)
    writer.flush()
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(next(tmp_path.glob("events*")))):
        tags |= {v.tag for v in event.summary.value}
    assert {"test/samples", "test/mistakes"} <= tags


def test_the_learned_embedding_goes_to_the_projector_with_its_words(flat_data, tmp_path):
    spec = flat_data.spec.input
    model = models.build("cnn", (), 3, input=spec)
    folder = textreport.log_embeddings(model, tmp_path)
    words = (folder / "words_0.tsv").read_text(encoding="utf-8").splitlines()
    assert words[:2] == ["[PAD]", "[UNK]"] and len(words) == spec.vocabulary_size
    saved = tf.train.load_checkpoint(str(folder))
    assert saved.get_tensor("words_0/.ATTRIBUTES/VARIABLE_VALUE").shape[0] == len(words)
    assert "words_0.tsv" in (folder / "projector_config.pbtxt").read_text()
    assert textreport.log_embeddings(models.build("mlp", (), 3, input=spec), tmp_path / "mlp") is None
