"""Tables: reading, type inference, missing values, splits, the spec, the models and the export
(real TensorFlow, real files: small tables made here, and the penguins file)."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline import models
from tfpipeline import signatures as names
from tfpipeline.data import table, tablefile
from tfpipeline.errors import UserError
from tfpipeline.export.savedmodel import set_method_names
from tfpipeline.inputs import from_json, table_report
from tfpipeline.inputs.table import TableInput
from tfpipeline.report import baseline, evaluation

ROOT = Path(__file__).resolve().parents[1]
PENGUINS = ROOT.parent / "shared" / "data" / "tables" / "penguins.csv"


@pytest.fixture(scope="module")
def penguins() -> Path:
    if not PENGUINS.is_file():
        pytest.fail(f"The penguins table is needed for these tests; {PENGUINS} does not exist (see "
                    "../shared/data/tables/README.md).")
    return PENGUINS


def write(path: Path, header: list[str], rows: list[list], sep: str = ",") -> Path:
    path.write_text(sep.join(header) + "\n" + "".join(sep.join(str(v) for v in row) + "\n" for row in rows))
    return path


def mixed_rows(n: int = 120, seed: int = 0) -> tuple[list[str], list[list]]:
    """A table with one column of each kind; the label follows `x` and `colour`."""
    rng = np.random.default_rng(seed)
    header = ["id", "x", "code", "colour", "flag", "when", "comment", "same", "label"]
    rows = []
    for i in range(n):
        x = rng.normal()
        colour = ["red", "green", "blue"][i % 3]
        label = "yes" if x + (colour == "red") > 0.5 else "no"
        rows.append([i + 1, f"{x:.3f}" if i % 10 else "NA", i % 4, colour, ["true", "false"][i % 2],
                     f"2024-01-{i % 28 + 1:02d}", f"free text number {i} here", "k", label])
    return header, rows


def test_type_inference(tmp_path):
    path = write(tmp_path / "mixed.csv", *mixed_rows())
    data = table.load_table(path, "label")
    spec = data.spec.input
    got = {c.name: (c.role, c.detected, c.dtype) for c in spec.columns}
    assert got["id"][:2] == ("ignored", "identifier")
    assert got["x"] == ("numeric", "number", "float32")
    assert got["code"] == ("categorical", "integer code", "int64")
    assert got["colour"] == ("categorical", "string", "string")
    assert got["flag"][:2] == ("categorical", "boolean")
    assert got["when"][:2] == ("ignored", "date")
    assert got["comment"][:2] == ("ignored", "text")
    assert got["same"][:2] == ("ignored", "constant")
    assert [c.name for c in spec.features] == ["x", "code", "colour", "flag"]
    assert data.spec.class_names == ("no", "yes")


def test_flags_override_and_bad_flags(tmp_path):
    path = write(tmp_path / "mixed.csv", *mixed_rows())
    spec = table.load_table(path, "label", flags={"numeric": ("code",), "categorical": ("id",),
                                                  "ignored": ("colour",)}).spec.input
    assert (spec.column("code").role, spec.column("code").detected) == ("numeric", "--numeric")
    assert spec.column("id").role == "categorical" and spec.column("id").dtype == "int64"
    assert spec.column("colour").role == "ignored"
    with pytest.raises(UserError, match="'nope' given to --numeric is not in the table; the columns are: id, x"):
        table.load_table(path, "label", flags={"numeric": ("nope",)})
    with pytest.raises(UserError, match="two of"):
        table.load_table(path, "label", flags={"numeric": ("x",), "ignored": ("x",)})


def test_missing_values_and_bad_rows(tmp_path):
    header = ["n", "c", "label"]
    rows = [[f"{i % 7}.5" if i % 5 else ["", "NA", "NaN", "?", "null"][i % 4], ["a", "b", ""][i % 3],
             "p" if i % 2 else "q"] for i in range(60)]
    rows[7] = ["oops", "a", "p"]  # an unparseable number: treated as missing
    path = tmp_path / "t.csv"
    text = write(path, header, rows).read_text() + "1.0,a\n2.0,b,p,extra\n"  # two rows with wrong field counts
    path.write_text(text)
    data = table.load_table(path, "label")
    source, n = data.spec.source, data.spec.input.column("n")
    assert source["skipped"]["count"] == 2 and "line 62" in source["skipped"]["rows"][0]
    assert source["unparseable"]["counts"] == {"n": 1}
    assert n.role == "numeric" and n.missing_indicator and n.missing > 0
    c = data.spec.input.column("c")
    assert c.vocabulary and "" not in c.vocabulary and c.width == len(c.vocabulary) + 1
    # The model imputes: NaN in, finite out, with the indicator set.
    model = models.build("mlp", data.spec.input_shape, 2, input=data.spec.input)
    encoded = model.get_layer("table_encoder")({"n": tf.constant([np.nan, 3.5]), "c": tf.constant(["", "zzz"])})
    assert np.isfinite(encoded.numpy()).all()
    np.testing.assert_allclose(encoded.numpy()[:, :2], [[0.0, 1.0], [(3.5 - n.mean) / n.std, 0.0]], rtol=1e-5)
    np.testing.assert_array_equal(encoded.numpy()[:, 2], [1.0, 1.0])  # missing and unseen: the OOV slot


def test_statistics_come_from_the_training_split(tmp_path):
    rows = [[(i * 37) % 50 + 0.5, ("a" if i % 2 else "c") if i < 50 else "b", "p" if i % 2 else "q"] for i in range(60)]
    rows[50][0] = 1000.5  # a test value far off: it must not move the mean
    folder = tmp_path / "split"
    folder.mkdir()
    write(folder / "train.csv", ["v", "c", "label"], rows[:50])
    write(folder / "test.csv", ["v", "c", "label"], rows[50:])
    data = table.load_table(folder, "label")
    v = data.spec.input.column("v")
    train_values = np.array([float(x["v"]) for x, _ in data.train])
    assert data.spec.num_examples == {"train": 40, "validation": 10, "test": 10}
    assert v.mean == pytest.approx(train_values.mean(), rel=1e-6)
    assert v.std == pytest.approx(train_values.std(), rel=1e-5)
    assert set(data.spec.input.column("c").vocabulary) == {"a", "c"}  # "b" is seen only in test
    assert data.spec.source["split"]["validation"]["carved_from"] == "train"


def test_splits_are_stratified_and_seeded(tmp_path, penguins):
    a = table.load_table(penguins, "species", seed=1)
    b = table.load_table(penguins, "species", seed=1)
    c = table.load_table(penguins, "species", seed=2)

    def labels(ds):
        return [int(y) for _, y in ds]

    assert labels(a.test) == labels(b.test) and a.spec.version == b.spec.version
    assert a.spec.version != c.spec.version
    assert a.spec.source["split"]["stratified"]
    whole = collections.Counter(labels(a.train) + labels(a.validation) + labels(a.test))
    test = collections.Counter(labels(a.test))
    for k in whole:
        assert abs(test[k] / sum(test.values()) - whole[k] / sum(whole.values())) < 0.02
    assert sum(a.spec.num_examples.values()) == 344


@pytest.mark.parametrize("case", ["no label column", "no file", "one class", "empty", "header only"])
def test_bad_input_is_a_user_error(tmp_path, case):
    path = tmp_path / "t.csv"
    if case == "no label column":
        write(path, ["a", "b"], [[1, 2], [3, 4]])
        with pytest.raises(UserError, match="label column 'label' is not in .*its columns are: a, b"):
            table.load_table(path, "label")
        return
    if case == "one class":
        write(path, ["a", "label"], [[i, "x"] for i in range(20)])
    elif case == "empty":
        path.write_text("")
    elif case == "header only":
        path.write_text("a,label\n")
    expected = {"no file": "does not exist", "one class": "only one class", "empty": "is empty",
                "header only": "no data rows"}[case]
    with pytest.raises(UserError, match=expected):
        table.load_table(path, "label")


def test_spec_round_trip_and_request(tmp_path):
    data = table.load_table(write(tmp_path / "m.csv", *mixed_rows()), "label")
    spec = data.spec.input
    record = json.loads(json.dumps(data.spec.to_json()))["input"]
    again = from_json(record)
    assert isinstance(again, TableInput) and again == spec
    with pytest.raises(UserError, match="lacks the feature column.* colour"):
        spec.request({"x": np.zeros(1), "code": np.zeros(1), "flag": np.array(["true"])})


def test_cnn_and_rnn_are_refused_on_tables(tmp_path):
    data = table.load_table(write(tmp_path / "m.csv", *mixed_rows()), "label")
    for name in ("cnn", "rnn"):
        with pytest.raises(UserError, match=f"The {name.upper()} family does not take tables"):
            models.build(name, data.spec.input_shape, 2, input=data.spec.input)


@pytest.fixture(scope="module")
def trained(penguins, tmp_path_factory):
    """A small MLP trained briefly on penguins and exported with the table's signatures."""
    keras.utils.set_random_seed(0)
    data = table.load_table(penguins, "species")
    spec = data.spec.input
    model = models.build("mlp", data.spec.input_shape, 3, models.hyperparams("mlp", {"units": 32}, kind="table"),
                         input=spec)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(data.train.batch(32), epochs=15, verbose=0)
    path = tmp_path_factory.mktemp("export") / "1"
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in spec.signatures(model).items():
        archive.add_endpoint(name, fn)
    archive.write_out(str(path), verbose=False)
    set_method_names(path, spec.method_names())
    features, labels = next(iter(data.test.batch(1000)))
    test = ({k: (np.array([s.decode() for s in v.numpy()], dtype=object) if v.dtype == tf.string else v.numpy())
             for k, v in features.items()}, labels.numpy())
    return data, model, path, test


def test_export_reloads_with_both_signatures(trained):
    data, model, path, (features, labels) = trained
    spec = data.spec.input
    loaded = tf.saved_model.load(str(path))
    request = spec.request(features)
    out = loaded.signatures[names.DEFAULT](**{k: tf.constant(v) for k, v in request.items()})
    in_process = np.asarray(model.predict(request, verbose=0)).argmax(axis=-1)
    np.testing.assert_array_equal(out[names.CLASSES].numpy(), in_process)
    assert (out[names.CLASSES].numpy() == labels).mean() > 0.85
    spec.verify(loaded, features)  # classify on tf.Examples gives serving_default's classes
    classify = loaded.signatures[names.TABLE_CLASSIFY](inputs=tf.constant(spec.serialize(request)))
    assert classify[names.CLASSES].numpy()[0].tolist() == [n.encode() for n in data.spec.class_names]
    signature = loaded.signatures[names.DEFAULT].structured_input_signature[1]
    assert {k: v.dtype for k, v in signature.items()} == {
        "island": tf.string, "sex": tf.string, "year": tf.int64, "bill_length_mm": tf.float32,
        "bill_depth_mm": tf.float32, "flipper_length_mm": tf.float32, "body_mass_g": tf.float32}


def test_saved_model_cli_shows_the_classify_method(trained):
    _, _, path, _ = trained
    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir",
                            str(path), "--tag_set", "serve", "--signature_def", names.TABLE_CLASSIFY],
                           capture_output=True, text=True, check=True).stdout
    assert "Method name is: tensorflow/serving/classify" in shown
    assert "inputs['inputs']" in shown and "DT_STRING" in shown and "outputs['scores']" in shown


def test_unseen_categories_and_missing_values_are_served(trained):
    data, _, path, (features, _) = trained
    spec = data.spec.input
    loaded = tf.saved_model.load(str(path))
    request = spec.request({k: v[:4] for k, v in features.items()})
    request["island"] = np.array(["Atlantis", "", "Biscoe", "Dream"], dtype=object)
    request["body_mass_g"] = np.array([np.nan, 4000, np.nan, 3000], dtype=np.float32)
    request["year"] = np.array([1999, 2007, 2008, 2030], dtype=np.int64)
    out = loaded.signatures[names.DEFAULT](**{k: tf.constant(v) for k, v in request.items()})
    assert np.isfinite(out[names.PROBABILITIES].numpy()).all()
    empty = tf.train.Example().SerializeToString()  # every feature missing: still answered
    scores = loaded.signatures[names.TABLE_CLASSIFY](inputs=tf.constant([empty]))[names.SCORES].numpy()
    assert scores.shape == (1, 3) and np.isfinite(scores).all()


def test_read_rows_for_predict(trained, tmp_path):
    data, _, _, _ = trained
    spec = data.spec.input
    rows = tmp_path / "rows.csv"
    rows.write_text("island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n"
                    "Biscoe,48.6,16,230,5800,male,2008\nDream,NA,18,190,?,NA,2009\n")
    labels, request = spec.read([str(rows)], {})
    assert labels == ["rows.csv:row 1", "rows.csv:row 2"]
    assert request["year"].dtype == np.int64 and np.isnan(request["body_mass_g"][1])
    assert request["sex"].tolist() == ["male", ""]
    (tmp_path / "short.csv").write_text("island,sex\nBiscoe,male\n")
    with pytest.raises(UserError, match="lacks the feature column.*bill_length_mm"):
        spec.read([str(tmp_path / "short.csv")], {})


def test_attributions_rank_features(trained, tmp_path):
    data, model, _, (features, labels) = trained
    spec = data.spec.input
    few = {k: v[:5] for k, v in features.items()}
    attributions, targets = table_report.integrated_gradients(spec, model, few, steps=128)
    assert attributions.shape == (5, len(spec.features))
    # Completeness: the attributions add up to the change of the explained class's probability.
    encoded = model.get_layer("table_encoder")({k: tf.constant(v) for k, v in spec.request(few).items()})
    body = model.get_layer("table_body")
    probs = tf.nn.softmax(body(encoded)).numpy()
    zero = tf.nn.softmax(body(tf.zeros_like(encoded))).numpy()
    expected = probs[np.arange(5), targets] - zero[0, targets]
    np.testing.assert_allclose(attributions.sum(axis=1), expected, atol=0.05)
    line = spec.explain(model, {k: v[:1] for k, v in features.items()}, tmp_path / "why.txt", data.spec.class_names)
    assert (tmp_path / "why.txt").read_text().count("\n") == len(spec.features) + 1 and ":" in line
    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    with writer.as_default():
        spec.log_attributions(model, features, labels, data.spec.class_names, step=0)
        spec.log_samples("samples", features, labels, model.predict(spec.request(features), verbose=0),
                         data.spec.class_names, step=0)
    writer.flush()
    assert list((tmp_path / "tb").glob("events.*"))


def test_transformer_builds_and_trains(penguins):
    data = table.load_table(penguins, "species")
    model = models.build("transformer", data.spec.input_shape, 3, input=data.spec.input)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(data.train.batch(64), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.get_layer("table_body").get_layer("column_tokens").output.shape[1:] == (7, 32)


def test_baseline_and_class_metrics(penguins):
    data = table.load_table(penguins, "species")
    spec = data.spec.input
    from tfpipeline.data.table import examples, read_parts
    parts, _ = read_parts(penguins, "species", 0.2, 42)
    result = baseline.gradient_boosting(spec, examples(spec, parts["train"]), examples(spec, parts["test"]))
    assert result.accuracy > 0.9 and result.num_test == data.spec.num_examples["test"]
    assert baseline.for_datasets(data).accuracy == result.accuracy  # the same splits, read from tf.data
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    metrics = evaluation.class_metrics(labels, probs, ("a", "b"))
    assert metrics["per_class_recall"] == {"a": 0.5, "b": 1.0} and metrics["roc_auc"] == 1.0
    assert table.class_weights(np.array([0, 0, 0, 1]), 2) == pytest.approx({0: 4 / 6, 1: 2.0})


def test_tsv_is_read_with_tabs(tmp_path):
    header, rows = mixed_rows(40)
    raw = tablefile.read(write(tmp_path / "m.tsv", header, rows, sep="\t"))
    assert raw.names == header and len(raw) == 40


def test_table_flags():
    from tfpipeline import cli
    from tfpipeline.config import PipelineConfig, TableOptions

    args = cli.build_parser(None, "table").parse_args(
        ["--dataset", "x.csv", "--label-column", "species", "--categorical", "year, sex", "--class-weight",
         "balanced", "--no-baseline"])
    config = cli.config_from_args(args, "table")
    assert config.kind == "table" and config.table.flags()["categorical"] == ("year", "sex")
    assert not config.table.baseline and config.table.class_weight == "balanced" and config.model == "mlp"
    config.table.validate()
    with pytest.raises(UserError, match="needs --label-column"):
        TableOptions().validate()
    with pytest.raises(UserError, match="--label-column, --categorical, .*do not apply to image"):
        PipelineConfig(table=config.table).validate()
    with pytest.raises(UserError, match="The CNN family does not take tables"):
        PipelineConfig(kind="table", model="cnn", table=TableOptions(label_column="species")).validate()


def test_column_names_become_valid_input_names(tmp_path):
    from tfpipeline import models

    rng = np.random.default_rng(0)
    rows = [[f"{x:.3f}", ["p q", "r"][i % 2], i % 3, "yes" if x > 0 else "no"]
            for i, x in enumerate(rng.normal(size=60))]
    path = write(tmp_path / "odd.csv", ["od280/od315", "mean radius", "_code", "the label"], rows)
    data = table.load_table(path, "the label", flags={"categorical": ("_code",)})
    spec = data.spec.input
    assert [c.name for c in spec.features] == ["od280_od315", "mean_radius", "c_code"]
    assert spec.label == "the_label" and spec.column("c_code").role == "categorical"
    model = models.build("mlp", (), 2, input=spec)  # Keras refuses `/` in an input's name
    assert sorted(model.input) == ["c_code", "mean_radius", "od280_od315"]
