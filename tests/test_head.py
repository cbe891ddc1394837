"""The third class as a head on the bundled 2-class model (maskbatch.train.head): trained here on
real voc-masks crops, its ONNX graph checked against the numpy head; the bundled 3-class model;
`predict --classes`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maskbatch.cli import main
from maskbatch.models.classifier import (
    BUNDLED_MODEL_DIRS,
    Classifier,
    class_names_of,
    model_for_classes,
    read_model,
)
from maskbatch.train import data as tdata
from maskbatch.train.head import (
    BaseFeatures,
    combine,
    feature_tensors,
    pooling_matrix,
)

onnx = pytest.importorskip("onnx", reason="the head needs the train extra (onnx)")


def test_pooling_matrix_averages_each_cell_once() -> None:
    matrix = pooling_matrix(7, 7)
    assert matrix.shape == (49, 9)
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0, rtol=1e-6)
    assert ((matrix > 0).sum(axis=1) == 1).all()  # every pixel in exactly one cell
    grid = np.arange(49, dtype=np.float32).reshape(7, 7)
    assert (grid.reshape(1, 49) @ matrix)[0, 0] == pytest.approx(grid[0:2, 0:2].mean())
    assert (grid.reshape(1, 49) @ matrix)[0, 8] == pytest.approx(grid[4:7, 4:7].mean())
    np.testing.assert_array_equal(pooling_matrix(3, 3), np.eye(9, dtype=np.float32))


def test_combine_keeps_the_two_class_decision_between_the_main_classes() -> None:
    prob = np.array([0.1, 0.46, 0.47, 0.48, 0.9])
    probs = combine(prob, np.full(5, -8.0), threshold=0.47)  # q near 0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert list(probs.argmax(axis=1)) == [1, 1, 0, 0, 0]  # mask where P >= 0.47
    assert (combine(prob, np.full(5, 8.0), 0.47).argmax(axis=1) == 2).all()


@pytest.fixture(scope="module")
def head_model(tmp_path_factory: pytest.TempPathFactory, data) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("head")
    crops = out / "x-voc"
    assert main(["extract", str(data / "voc-masks"), "--out", str(crops), "--classes", "3",
                 "--workers", "1"]) == 0
    model = out / "model3"
    assert main(["train", str(crops), "--out", str(model), "--classes", "3", "--base"]) == 0
    return str(model), json.loads((model / "model_card.json").read_text())


def test_head_on_real_crops_gives_a_three_class_model(head_model, data) -> None:
    model_dir, card = head_model
    onnx_bytes, card = read_model(model_dir)  # checksum-verified
    assert class_names_of(card) == ("face_with_mask", "face_no_mask", "face_with_mask_incorrect")
    assert card["parity_max_abs_diff"] < 1e-4
    assert card["base_model"]["onnx_sha256"] == read_model(BUNDLED_MODEL_DIRS[2])[1]["onnx_sha256"]
    cv = card["cross_validation"]
    assert cv["incorrect_ap"] > 0.1  # real, if weak on 45 crops: chance is about 0.03
    # the two main classes are the base model's decision wherever the third class does not win
    base_bytes, base_card = read_model(BUNDLED_MODEL_DIRS[2])
    df, _ = tdata.load_sets(card["training_data"]["sets"]["voc-masks"]["crops_dirs"],
                            class_names=class_names_of(card))
    x = tdata.to_arrays(df.iloc[:300], card["input_size"], class_names_of(card)).x
    probs = Classifier(onnx_bytes, card).probabilities(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    p = Classifier(base_bytes, base_card).predict_batch(x).reshape(-1)
    main_two = probs[:, 2] < probs[:, :2].max(axis=1)
    assert main_two.mean() > 0.8
    np.testing.assert_array_equal((probs[main_two, 0] >= probs[main_two, 1]),
                                  p[main_two] >= base_card["threshold"])
    # the graph's features are the base model's own GlobalAveragePool inputs
    assert len(feature_tensors(onnx.load_from_string(base_bytes))) == \
        len(BaseFeatures(base_bytes, base_card).maps)


def test_head_refuses_a_three_class_base(head_model, tmp_path, data) -> None:
    model_dir, card = head_model
    crops = card["training_data"]["sets"]["voc-masks"]["crops_dirs"][0]
    assert main(["train", crops, "--out", str(tmp_path / "m"), "--classes", "3", "--base",
                 model_dir]) == 2
    assert main(["train", crops, "--out", str(tmp_path / "m"), "--base"]) == 2


def test_head_refuses_options_of_the_nets_it_keeps(tmp_path, capsys) -> None:
    # --base fits a head only: a net option would be ignored, so it is refused before any work
    for extra in (["--epochs", "3"], ["--arch", "compact"], ["--batch-size", "8", "--threads", "1"]):
        assert main(["train", str(tmp_path), "--out", str(tmp_path / "m"), "--classes", "3",
                     "--base", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and extra[0] in err[0] and "cannot apply" in err[0]
    assert not (tmp_path / "m").exists()


def test_bundled_three_class_model_is_the_head_on_the_bundled_pair() -> None:
    _, card3 = read_model(BUNDLED_MODEL_DIRS[3])
    _, card2 = read_model(BUNDLED_MODEL_DIRS[2])
    assert len(class_names_of(card3)) == 3
    assert card3["base_model"]["onnx_sha256"] == card2["onnx_sha256"]
    assert card3["base_model"]["threshold"] == card2["threshold"]


def test_predict_classes_picks_the_bundled_model(tmp_path, data, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((data / "voc-masks" / "images").iterdir())[:4]:
        (photos / path.name).write_bytes(path.read_bytes())
    assert model_for_classes(None, None) is None
    assert model_for_classes(None, 3) == str(BUNDLED_MODEL_DIRS[3])
    args = ["predict", str(photos), "--workers", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "o3"), "--classes", "3"]) == 0
    det = pd.read_parquet(tmp_path / "o3" / "detections.parquet")
    assert {"prob_face_with_mask", "prob_face_no_mask",
            "prob_face_with_mask_incorrect"} <= set(det.columns)
    assert main([*args, "--out", str(tmp_path / "o2"), "--classes", "2"]) == 0
    assert main([*args, "--out", str(tmp_path / "od")]) == 0
    assert (tmp_path / "o2" / "submission.csv").read_bytes() == \
        (tmp_path / "od" / "submission.csv").read_bytes()
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "ox"), "--classes", "3", "--model",
                 str(BUNDLED_MODEL_DIRS[2])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--classes 3 but the model" in err[0]


def test_evaluate_over_three_classes_gives_per_class_intervals_and_a_gallery(tmp_path, data,
                                                                             capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((data / "voc-masks" / "images").iterdir())[:6]:
        (photos / path.name).write_bytes(path.read_bytes())
    args = ["predict", str(photos), "--workers", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "o3"), "--classes", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "o2")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--truth", str(data / "voc-masks"), "--pred", str(tmp_path / "o3"),
                 "--baseline", str(tmp_path / "o2"), "--classes", "3", "--resamples", "50",
                 "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "AP face_with_mask_incorrect" in printed and "mAP of face_with_mask" in printed
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"ap:face_with_mask", "ap:face_no_mask", "ap:face_with_mask_incorrect",
            "map_main"} <= set(metrics["intervals"]["point"])
    assert "map_main" in metrics["baseline"]["difference"]["point"]
    gallery = tmp_path / "ev" / "faces_face_with_mask_incorrect.png"
    assert gallery.stat().st_size > 1000  # voc-masks labels 56 such faces, drawn from truth's images/
    # a 2-class evaluation keeps its intervals as they were
    assert main(["evaluate", "--truth", str(data / "voc-masks"), "--pred", str(tmp_path / "o2"),
                 "--resamples", "20", "--out", str(tmp_path / "ev2")]) == 0
    two = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert set(two["intervals"]["point"]) == {"map", "faces_found", "label_accuracy"}
    assert not (tmp_path / "ev2" / "faces_face_with_mask_incorrect.png").exists()
