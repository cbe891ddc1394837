"""The mask classifier: grouped split, metrics, checksum refusal, bundled model, training + export.

Data tests skip when the sample data folder is missing (set MASKBATCH_DATA); training tests skip
when TensorFlow (the train extra) is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskbatch.config import CLASS_NAMES, MASK, NO_MASK
from maskbatch.errors import MaskbatchError
from maskbatch.models.classifier import BUNDLED_MODEL_DIR, Classifier, read_model, sha256_bytes
from maskbatch.outputs.writers import write_parquet_atomic
from maskbatch.train import DEFAULT_ARCH
from maskbatch.train import data as tdata
from maskbatch.train.metrics import choose_threshold, classification_report

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def medical_crops(data: Path) -> pd.DataFrame:
    """All labelled crops of the medical-mask sample, extracted in-process (about 5 s)."""
    from maskbatch.datasets import DEFAULT_LABEL_MAP, load_records
    from maskbatch.pipeline import extract_partition

    crops, _ = extract_partition(load_records(str(data / "medical-mask")), DEFAULT_LABEL_MAP)
    return crops


@pytest.fixture(scope="module")
def small_crops_dir(data: Path, medical_crops: pd.DataFrame,
                    tmp_path_factory: pytest.TempPathFactory) -> str:
    """An extract folder of medical-mask holding the crops of 50 real source images (about 250
    crops); its run.json names the dataset, so training uses the committed split."""
    images = sorted(medical_crops["source_image"].unique())[:50]
    subset = medical_crops[medical_crops["source_image"].isin(images)]
    folder = tmp_path_factory.mktemp("crops-small")
    write_parquet_atomic(subset, str(folder / "crops" / "part-00000.parquet"))
    (folder / "run.json").write_text(json.dumps({"dataset": str(data / "medical-mask")}))
    return str(folder)


@pytest.fixture(scope="module")
def web_crops_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An extract folder of 100 folder-per-class web crops (no committed split: grouped 80/20)."""
    from maskbatch.datasets import DEFAULT_LABEL_MAP, load_records
    from maskbatch.pipeline import extract_partition

    records = load_records(str(data / "crops"))
    crops, _ = extract_partition(records[::len(records) // 100][:100], DEFAULT_LABEL_MAP)
    folder = tmp_path_factory.mktemp("web")
    write_parquet_atomic(crops, str(folder / "crops" / "part-00000.parquet"))
    (folder / "run.json").write_text(json.dumps({"dataset": str(data / "crops")}))
    return str(folder)


def _train_command(folders: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "maskbatch.cli", "train", *folders, "--out", str(out),
            "--epochs", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def tiny_model(small_crops_dir: str, web_crops_dir: str, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[str, dict]:
    """The default model (the compact + backbone pair) trained for 2 epochs on two small real sets,
    by `maskbatch train` in a fresh process (TensorFlow's thread pools are set there, before it
    starts)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    out = tmp_path_factory.mktemp("model-tiny")
    started = time.perf_counter()
    proc = subprocess.run(_train_command([small_crops_dir, web_crops_dir], out),
                          capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    card["_seconds"] = time.perf_counter() - started
    return str(out), card


# --------------------------------------------------------------------------- split and metrics


def test_split_has_no_leakage_on_real_crops(medical_crops: pd.DataFrame) -> None:
    df, dedup = tdata.drop_duplicates(medical_crops)
    train, val = tdata.split_train_val(df, seed=0)
    assert not (train & val).any() and (train | val).all()
    assert not set(df.loc[train, "source_image"]) & set(df.loc[val, "source_image"])
    assert not set(df.loc[train, "pixel_hash"]) & set(df.loc[val, "pixel_hash"])
    # about 80/20 for each class
    for name in CLASS_NAMES:
        share = (df.loc[val, "label"] == name).sum() / (df["label"] == name).sum()
        assert 0.15 <= share <= 0.2, (name, share)
    # seeded: same seed, same split; another seed, another split
    assert (tdata.split_train_val(df, seed=0)[1] == val).all()
    assert not (tdata.split_train_val(df, seed=1)[1] == val).all()


def _synthetic(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"crop_id": f"{img}#{i}", "source_dataset": "t", "source_image": img,
          "pixel_hash": h, "label": label} for i, (img, h, label) in enumerate(rows)]
    )


def test_duplicate_crops_chain_images_to_one_side() -> None:
    # a.jpg and b.jpg share a pixel-identical crop, b.jpg and c.jpg another: one group of three
    rows = [("a.jpg", "h1", MASK), ("a.jpg", "h2", NO_MASK), ("b.jpg", "h2", NO_MASK),
            ("b.jpg", "h3", MASK), ("c.jpg", "h3", MASK)]
    rows += [(f"x{i}.jpg", f"u{i}", MASK if i % 3 else NO_MASK) for i in range(40)]
    df = _synthetic(rows)
    groups = tdata.leakage_groups(df)
    assert len(set(groups[:5])) == 1
    assert len(set(groups[5:])) == 40
    for seed in range(5):
        train, val = tdata.split_train_val(df, seed=seed)
        assert len(set(val[:5])) == 1
        assert not set(df.loc[train, "pixel_hash"]) & set(df.loc[val, "pixel_hash"])
        assert not set(df.loc[train, "source_image"]) & set(df.loc[val, "source_image"])


def test_drop_duplicates_keeps_one_and_drops_conflicts() -> None:
    df = _synthetic([("a", "h1", MASK), ("b", "h1", MASK), ("c", "h2", MASK),
                     ("d", "h2", NO_MASK), ("e", "h3", NO_MASK)])
    out, info = tdata.drop_duplicates(df)
    assert sorted(out["pixel_hash"]) == ["h1", "h3"]
    assert info == {"duplicates_dropped": 1, "conflicting_label_crops_dropped": 2}


def test_class_weights_balance_the_classes() -> None:
    y = np.array([1] * 80 + [0] * 20)
    w = tdata.class_weights(y)
    assert w[1] * 80 == pytest.approx(w[0] * 20)


def test_metrics_and_threshold() -> None:
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.3, 0.6])
    rep = classification_report(y, p, 0.5)
    assert rep["accuracy"] == 0.6
    assert rep["confusion_matrix"]["rows_true_cols_pred"] == [[2, 1], [1, 1]]
    assert rep["per_class"][MASK]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert rep["per_class"][NO_MASK]["recall"] == 0.5
    # separable scores: the chosen threshold sits in the middle of the perfect range (0.36..0.40)
    p = np.array([0.9, 0.8, 0.4, 0.3, 0.35])
    t = choose_threshold(y, p)
    assert t == pytest.approx(0.38)
    assert classification_report(y, p, t)["accuracy"] == 1.0


def test_sets_are_read_in_one_order_and_split_by_the_committed_lists(
        small_crops_dir: str, web_crops_dir: str) -> None:
    from maskbatch.datasets.splits import split_names

    table, info = tdata.load_sets([small_crops_dir, web_crops_dir])
    again, _ = tdata.load_sets([web_crops_dir, small_crops_dir])
    pd.testing.assert_frame_equal(table, again)  # the folders' order changes nothing
    assert sorted(info) == ["crops", "medical-mask"]
    # a copy of a medical-mask val crop in a train photo of another set must not train
    val_names = set(split_names("medical-mask", "val"))
    medical = table[table["set"] == "medical-mask"]
    voc_train_photo = split_names("voc-masks", "train")[0]
    leak = medical[medical["source_image"].isin(val_names)].iloc[[0]].assign(
        set="voc-masks", crop_id=f"{voc_train_photo}#0", source_image=voc_train_photo)
    df = pd.concat([table, leak], ignore_index=True)
    parts = tdata.assign_parts(df, seed=0)
    assert parts[-1] == "dropped"
    is_medical = (df["set"] == "medical-mask").to_numpy()
    assert ((parts[is_medical] == "val") == df.loc[is_medical, "source_image"].isin(val_names)
            ).all()
    web = (df["set"] == "crops").to_numpy()
    share = (parts[web] == "val").mean()
    assert 0.1 <= share <= 0.25, share
    assert (parts == "tune").sum() > 0
    image = (df["set"] + "/" + df["source_image"]).to_numpy()
    for a, b in (("train", "tune"), ("train", "val"), ("tune", "val")):
        assert not set(image[parts == a]) & set(image[parts == b]), (a, b)
    hashes = df["pixel_hash"].to_numpy()
    assert not set(hashes[parts == "val"]) & set(hashes[(parts == "train") | (parts == "tune")])
    assert (tdata.assign_parts(df, seed=0) == parts).all()  # seeded


def test_limit_keeps_train_and_val_photos(small_crops_dir: str) -> None:
    """A --limit subset is not all validation (it once drew the split's own first photos)."""
    table, _ = tdata.load_sets([small_crops_dir], limit=100)
    parts = tdata.assign_parts(table, seed=0)
    assert 80 <= len(table) <= 150
    assert (parts == "train").any() and (parts == "val").any()


# --------------------------------------------------------------------------- bundled model


def _real_crops(data: Path, per_class: int = 100) -> tuple[list[np.ndarray], np.ndarray]:
    from maskbatch.photos.reading import load_image

    faces, labels = [], []
    for folder, target in (("with_mask", 1), ("without_mask", 0)):
        paths = sorted((data / "crops" / folder).iterdir())
        for path in paths[:: max(1, len(paths) // per_class)][:per_class]:
            faces.append(load_image(str(path)))
            labels.append(target)
    return faces, np.array(labels)


def test_bundled_model_classifies_real_crops_without_tensorflow(data: Path) -> None:
    if not (BUNDLED_MODEL_DIR / "model.onnx").is_file():
        pytest.fail("the bundled model maskbatch/models/model.onnx is missing")
    onnx_bytes, card = read_model()
    for key in ("input_size", "threshold", "onnx_sha256", "color_order", "scaling",
                "class_names", "output", "architecture", "parameters", "validation", "versions",
                "command", "training_data"):
        assert key in card, key
    assert card["color_order"] == "BGR" and card["class_names"] == list(CLASS_NAMES)
    assert len(onnx_bytes) < 5_000_000

    classifier = Classifier(onnx_bytes, card)
    (inp,), (out,) = classifier.session.get_inputs(), classifier.session.get_outputs()
    size = card["input_size"]
    assert not isinstance(inp.shape[0], int) and inp.shape[1:] == [size, size, 3]  # dynamic batch
    assert (inp.name, out.name) == ("input", "mask_prob")
    faces, y = _real_crops(data)
    prob = classifier.mask_probability(faces)
    assert prob.shape == (len(faces),) and np.all((prob >= 0) & (prob <= 1))
    pred = (prob >= classifier.threshold).astype(int)
    accuracy = float(np.mean(pred == y))
    assert accuracy >= 0.8, accuracy  # a third, unseen dataset (web photos): 0.84 on all 4071
    one = classifier.mask_probability(faces[:1])
    assert one[0] == pytest.approx(prob[0], abs=1e-5)  # batch 1 == inside a batch

    # inference needs onnxruntime only: loading and predicting never import TensorFlow
    code = ("import sys, numpy as np; from maskbatch.models.classifier import read_model, Classifier; "
            "c = Classifier(*read_model()); "
            "c.mask_probability([np.zeros((50, 40, 3), np.uint8)]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    onnx_bytes, card = read_model()
    changed = bytearray(onnx_bytes)
    changed[len(changed) // 2] ^= 0xFF
    with pytest.raises(MaskbatchError, match="sha256"):
        Classifier(bytes(changed), card)
    with pytest.raises(MaskbatchError, match="onnx_sha256"):
        Classifier(onnx_bytes, {k: v for k, v in card.items() if k != "onnx_sha256"})

    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, folder)
    assert read_model(folder)[1]["onnx_sha256"] == sha256_bytes(onnx_bytes)
    (folder / "model.onnx").write_bytes(bytes(changed))
    with pytest.raises(MaskbatchError, match="does not match"):
        read_model(folder)


# --------------------------------------------------------------------------- training


def test_train_without_tensorflow_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskbatch.train import train

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MaskbatchError, match=r"maskbatch\[train\]"):
        train("nowhere", "nowhere-out")
    with pytest.raises(MaskbatchError, match="unknown architecture"):
        train("nowhere", "nowhere-out", arch="resnet")
    with pytest.raises(MaskbatchError, match="unknown architecture 'resnet'"):
        train("nowhere", "nowhere-out", arch="compact+resnet")
    with pytest.raises(MaskbatchError, match="names a net twice"):
        train("nowhere", "nowhere-out", arch="compact+compact")


def test_bad_architecture_is_one_readable_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "train", str(tmp_path), "--out",
                           str(tmp_path / "m"), "--arch", "compact+vgg"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown architecture 'vgg'" in proc.stderr


def test_architectures() -> None:
    pytest.importorskip("tensorflow")
    from maskbatch.train.architectures import INPUT_SIZES, build_model

    seed = build_model("seed")
    assert seed.input_shape == (None, 124, 124, 3)
    # the notebook's network: Flatten of 60x60x128 (after max-pool) into Dense(50)
    assert seed.count_params() == 896 + 18_496 + 73_856 + (60 * 60 * 128 + 1) * 50 + 51
    compact = build_model("compact")
    size = INPUT_SIZES["compact"]
    assert compact.input_shape == (None, size, size, 3)
    assert compact.count_params() < seed.count_params() / 50


def test_backbone_starts_from_the_bundled_detectors_weights(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The backbone net takes the compact net's input and starts from the bundled (sha256-checked)
    detector's backbone weights, layer for layer; its head is new. A detector folder given by
    $MASKBATCH_DETECTOR_MODEL is named by its own path."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx")
    from maskbatch.models.yunet import read_tuned_card
    from maskbatch.train.architectures import INPUT_SIZES, build_model, pretrained_backbone
    from maskbatch.train.yunet_graph import float_weights

    net = build_model("backbone")
    assert net.input_shape == (None, INPUT_SIZES["compact"], INPUT_SIZES["compact"], 3)
    assert net.count_params() < build_model("compact").count_params()
    backbone = net.get_layer("yunet_backbone")
    detector = float_weights(read_tuned_card()[0])
    convs = [layer for layer in backbone.layers if layer.name.startswith("conv_")
             and not layer.name.endswith("_pad")]
    assert len(convs) == 23  # the stem and 11 (1x1, depthwise 3x3) pairs
    for layer in convs:
        kernel = detector[layer.name + "/kernel"]  # ONNX (O, I/g, kh, kw)
        kernel = kernel.transpose(2, 3, 0, 1) if "Depthwise" in type(layer).__name__ \
            else kernel.transpose(2, 3, 1, 0)
        np.testing.assert_array_equal(layer.get_weights()[0], kernel)
    assert pretrained_backbone()["sha256"] == read_tuned_card()[1]["onnx_sha256"]
    assert pretrained_backbone()["file"] == "maskbatch/models/detector.onnx"
    elsewhere = tmp_path / "detector"
    shutil.copytree(read_tuned_card()[0].parent, elsewhere,
                    ignore=shutil.ignore_patterns("model*"))
    monkeypatch.setenv("MASKBATCH_DETECTOR_MODEL", str(elsewhere))
    assert pretrained_backbone()["file"] == str((elsewhere / "detector.onnx").resolve())


def test_short_real_training_run_writes_everything(tiny_model: tuple[str, dict]) -> None:
    out, card = tiny_model
    for name in ("model.onnx", "model.keras", "model_card.json", "history.json",
                 "accuracy.png", "loss.png", "confusion_matrix.png", "confusion_per_set.png"):
        assert (Path(out) / name).is_file(), name
    assert (Path(out) / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    onnx_bytes, on_disk = read_model(out)
    assert on_disk["onnx_sha256"] == sha256_bytes(onnx_bytes)
    assert on_disk["parity_max_abs_diff"] < 1e-4
    assert on_disk["training"]["epochs_run"] == 2
    summary = on_disk["training_data"]
    assert sum(summary[p]["crops"] for p in ("train", "tune", "val")) == summary["crops_used"]
    assert set(summary["counts"]) == set(CLASS_NAMES)
    assert on_disk["validation"]["n"] == summary["val"]["crops"]
    assert on_disk["training"]["tensorflow_threads"] == {"intra_op": 2, "inter_op": 2}
    assert on_disk["outputs"] == ["mask_prob"]
    history = json.loads((Path(out) / "history.json").read_text())["history"]
    assert len(history["loss"]) == len(history["val_accuracy"]) == 2
    Classifier(onnx_bytes, on_disk).mask_probability([np.zeros((30, 30, 3), np.uint8)])


def test_card_reports_each_sets_validation_part(tiny_model: tuple[str, dict],
                                               small_crops_dir: str) -> None:
    """Per-set metrics on each set's val part: medical-mask's committed val photos, a grouped 20 %
    of the web crops; their crops add up to the combined validation, and no val photo trained."""
    from maskbatch.datasets.splits import split_names

    _, card = tiny_model
    per_set, sets = card["validation_per_set"], card["training_data"]["sets"]
    assert set(per_set) == set(sets) == {"medical-mask", "crops"}
    assert sum(rep["n"] for rep in per_set.values()) == card["validation"]["n"]
    for name, rep in per_set.items():
        assert rep["n"] == sets[name]["val"]["crops"] > 0
        matrix = np.array(rep["confusion_matrix"]["rows_true_cols_pred"])
        assert matrix.sum() == rep["n"]
        assert rep["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-4)
    assert "committed" in sets["medical-mask"]["split"] and "groups" in sets["crops"]["split"]
    photos = set(tdata.load_crop_table(small_crops_dir)["source_image"])
    in_val = photos & set(split_names("medical-mask", "val"))
    assert sets["medical-mask"]["val"]["images"] == len(in_val) > 0
    assert sets["medical-mask"]["train"]["images"] + sets["medical-mask"]["tune"]["images"] \
        == len(photos - in_val)
    assert card["threshold_rule"].endswith("never on val")


def test_parity_check_on_real_crops_and_loud_failure(tiny_model: tuple[str, dict],
                                                     small_crops_dir: str) -> None:
    import keras

    from maskbatch.train.export import parity_check, to_onnx

    out, card = tiny_model
    size = card["input_size"]
    model = keras.saving.load_model(str(Path(out) / "model.keras"))
    df = tdata.load_crop_table(small_crops_dir)
    x = tdata.to_arrays(df.iloc[:64], size).x
    onnx_bytes, _ = read_model(out)
    assert parity_check(model, onnx_bytes, x) < 1e-4
    # a fresh export of the same model agrees as well (dynamic batch: 64 and 1)
    again = to_onnx(model, size)
    assert parity_check(model, again, x[:1]) < 1e-4
    # a model that no longer matches the ONNX file fails loudly
    model.set_weights([w + 0.05 for w in model.get_weights()])
    with pytest.raises(MaskbatchError, match="disagrees"):
        parity_check(model, onnx_bytes, x)


def test_training_is_reproducible(tiny_model: tuple[str, dict], small_crops_dir: str,
                                  web_crops_dir: str, tmp_path: Path) -> None:
    """The same command in another process, folders in the other order, writes the same bytes
    (TensorFlow threads pinned to 2 whatever the machine's core count; rows in canonical order)."""
    out, card = tiny_model
    proc = subprocess.run(_train_command([web_crops_dir, small_crops_dir], tmp_path / "again"),
                          capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "model_card.json").read_text())
    assert again["onnx_sha256"] == card["onnx_sha256"]
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (Path(out) / "model.onnx").read_bytes()
    assert again["validation_per_set"] == card["validation_per_set"]


def test_default_pairs_the_compact_net_with_the_pretrained_backbone(tiny_model: tuple[str, dict],
                                                                    small_crops_dir: str) -> None:
    """The default recipe trains two nets on the same parts, the compact CNN and the detector's
    backbone, and exports one ONNX graph whose output is their mean."""
    import keras

    out, card = tiny_model
    assert card["architecture"] == DEFAULT_ARCH == "compact+backbone"
    assert [(m["architecture"], m["seed"]) for m in card["training"]["members"]] == [
        ("compact", 0), ("backbone", 0)]
    assert card["members"] == 2 and card["outputs"] == ["mask_prob"]
    assert card["pretrained"]["file"] == "maskbatch/models/detector.onnx"
    assert "MIT" in card["pretrained"]["licence"]
    assert len(json.loads((Path(out) / "history.json").read_text())["members"]) == 2
    onnx_bytes, _ = read_model(out)
    x = tdata.to_arrays(tdata.load_crop_table(small_crops_dir).iloc[:16], card["input_size"]).x
    pair = keras.models.load_model(Path(out) / "model.keras")
    members = [pair.get_layer(f"member{i}").predict(x, verbose=0).ravel() for i in range(2)]
    np.testing.assert_allclose(Classifier(onnx_bytes, card).predict_batch(x),
                               (members[0] + members[1]) / 2, atol=1e-5)
    assert np.abs(members[0] - members[1]).max() > 1e-3  # two different nets


def test_export_names_do_not_depend_on_the_initializers_order() -> None:
    """tf2onnx may list a graph's constants in another order in another process: the canonical
    form numbers and sorts them by the node and input slot that first read them, so any order
    gives the same bytes (no TensorFlow needed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from maskbatch.train.export import _canonical_names

    def graph(order: list[int]) -> bytes:
        consts = [numpy_helper.from_array(np.full((1, 1, 1, 1), k, np.float32), f"w__{40 - k}")
                  for k in range(3)]
        nodes = [helper.make_node("Conv", ["input", "w__40"], ["a"], name="Conv__7"),
                 helper.make_node("Conv", ["a", "w__39"], ["b"], name="Conv__8"),
                 helper.make_node("Conv", ["b", "w__38"], ["Identity:0"], name="Conv__9")]
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["unk__1", 1, 4, 4])],
            [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, None)],
            [consts[k] for k in order])
        proto = helper.make_model(g)
        _canonical_names(proto, ["mask_prob"])
        return proto.SerializeToString()

    first = graph([0, 1, 2])
    assert graph([2, 0, 1]) == graph([1, 2, 0]) == first
    proto = onnx.load_from_string(first)
    assert [i.name for i in proto.graph.initializer] == ["c0", "c1", "c2"]
    assert [n.input[1] for n in proto.graph.node] == ["c0", "c1", "c2"]
    assert proto.graph.output[0].name == "mask_prob"
