"""Classifier architectures: the seed notebook's CNN, the compact CNN, and a net on the face
detector's pretrained backbone (the default model averages compact and backbone).

All take :func:`maskbatch.models.classifier.preprocess` output (BGR, x/255, float32 NHWC) and end in one
sigmoid unit, P(face_with_mask). The notebook's augmentation (rotation 15 degrees, shifts 0.1,
horizontal flip) sits at the front of each model as Keras preprocessing layers: they act while
training and are identity at inference, so the exported ONNX graph contains none of them.

Imports TensorFlow/Keras; only :mod:`maskbatch.train` modules import this file.
"""

from __future__ import annotations

import keras
from keras import layers

from maskbatch.models.yunet import detector_reference, read_tuned_card
from maskbatch.train.architecture_names import ARCHITECTURES

INPUT_SIZES = {"compact": 124, "seed": 124, "backbone": 124}
DESCRIPTIONS = {
    "seed": "seed notebook CNN: Conv32(same)-Conv64-Conv128 3x3, MaxPool2, Dropout.25, Flatten, "
            "Dropout.5, Dense50, Dropout.5, Dense1 sigmoid; 124x124x3",
    "compact": "compact CNN: 7 plain 3x3 conv+BatchNorm+ReLU layers (16/2, 32/2-32, 64/2-64, "
               "128/2-128; /2 = stride 2), GlobalAveragePooling, Dropout.3, Dense1 sigmoid; "
               "124x124x3",
    "backbone": "the bundled face detector's backbone (fine-tuned YuNet: a 3x3/2 stem and 11 "
                "depthwise-separable conv pairs with max-pooling, to stride 32), then conv3x3 "
                "128+BatchNorm+ReLU on its stride-32 features; GlobalAveragePooling of that and of "
                "the stride-16 features, Dropout.3, Dense1 sigmoid; 124x124x3",
}


def _notebook_layers(seed: int) -> tuple[layers.Layer, layers.Layer, layers.Layer]:
    """The notebook's ImageDataGenerator settings: rotation 15 degrees, shifts 0.1, flip."""
    return (layers.RandomRotation(15 / 360, fill_mode="nearest", seed=seed),
            layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 1),
            layers.RandomFlip("horizontal", seed=seed + 2))


def augmentation(seed: int) -> keras.Sequential:
    """The notebook's augmentation as preprocessing layers (training only)."""
    return keras.Sequential(list(_notebook_layers(seed)), name="augmentation")


# The compact net's augmentation adds what the notebook's lacks (training only, identity at
# inference). Box scale: a detector's box is not the annotator's, so crops are zoomed in and out by
# up to 15 %. Colour: masks come in every colour while the sets' training crops are mostly white
# and blue (a pink, an orange and a patterned mask were called "no mask" on validation photos), and
# lighting varies; brightness, contrast, saturation and a small hue turn, and 10 % grey crops.
COLOUR_AUGMENTATION = ("RandomZoom(+-0.15), RandomColorJitter(brightness 0.2, contrast 0.3, "
                       "saturation 0.4, hue 0.08), RandomGrayscale(0.1)")


def colour_augmentation(seed: int) -> keras.Sequential:
    """The notebook's augmentation plus box-scale and colour jitter (see COLOUR_AUGMENTATION);
    the zoom acts before the flip."""
    rotation, translation, flip = _notebook_layers(seed)
    return keras.Sequential(
        [
            rotation,
            translation,
            layers.RandomZoom((-0.15, 0.15), fill_mode="nearest", seed=seed + 3),
            flip,
            layers.RandomColorJitter(value_range=(0.0, 1.0), brightness_factor=0.2,
                                     contrast_factor=0.3, saturation_factor=0.4,
                                     hue_factor=0.08, seed=seed + 4),
            layers.RandomGrayscale(0.1, seed=seed + 5),
        ],
        name="augmentation",
    )


def _head(x: keras.KerasTensor, n_classes: int = 2) -> keras.KerasTensor:
    """The output layer: one sigmoid unit, P(face_with_mask), for two classes; a softmax over
    `n_classes` (in class_names order) for more."""
    if n_classes == 2:
        return layers.Dense(1, activation="sigmoid", name="mask_prob")(x)
    return layers.Dense(n_classes, activation="softmax", name="class_probs")(x)


def build_seed(seed: int = 0, n_classes: int = 2) -> keras.Model:
    """Exactly the notebook's network (about 23M parameters, almost all in Dense(50))."""
    size = INPUT_SIZES["seed"]
    inputs = keras.Input((size, size, 3), name="input")
    x = augmentation(seed)(inputs)
    x = layers.Conv2D(32, (3, 3), padding="same", activation="relu")(x)
    x = layers.Conv2D(64, (3, 3), activation="relu")(x)
    x = layers.Conv2D(128, (3, 3), activation="relu")(x)
    x = layers.MaxPooling2D(pool_size=(2, 2))(x)
    x = layers.Dropout(0.25, seed=seed)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5, seed=seed + 1)(x)
    x = layers.Dense(50, activation="relu")(x)
    x = layers.Dropout(0.5, seed=seed + 2)(x)
    outputs = _head(x, n_classes)
    return keras.Model(inputs, outputs, name="seed")


def _conv(x: keras.KerasTensor, filters: int, strides: int = 1) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def build_compact(seed: int = 0, n_classes: int = 2) -> keras.Model:
    """A small all-convolutional net: about 0.29M parameters, about 43M multiply-adds per crop.

    Full 124 px input (the crops' own size: no second resize, fine detail kept) but a stride-2
    stem, then three stages that halve the resolution (62 -> 31 -> 16 -> 8) and double the width,
    and global average pooling instead of the seed's 460k-feature Flatten.
    """
    size = INPUT_SIZES["compact"]
    inputs = keras.Input((size, size, 3), name="input")
    x = colour_augmentation(seed)(inputs)
    x = _conv(x, 16, strides=2)
    for width in (32, 64, 128):
        x = _conv(x, width, strides=2)
        x = _conv(x, width)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3, seed=seed)(x)
    outputs = _head(x, n_classes)
    return keras.Model(inputs, outputs, name="compact")


# The face detector's backbone as the classifier's feature extractor: the bundled fine-tuned YuNet
# (pretrained on WIDER FACE, fine-tuned on the training photos' faces, never on val photos) has
# learned face parts from far more faces than the crops hold. It takes BGR 0..255; at 124 px its
# stride-16 features are 7x7 and its stride-32 output 3x3 (max-pooling floors).
BACKBONE_INPUTS = ("conv_backbone_model4_conv1_conv1", "conv_neck_lateral_convs_2_conv1")


def pretrained_backbone() -> dict[str, str]:
    """Where the backbone's starting weights come from: the fine-tuned detector that
    ``read_tuned_card`` finds (the bundled one, or $MASKBATCH_DETECTOR_MODEL's), sha256-checked;
    the bundled file is named by its place in the package."""

    return detector_reference(*read_tuned_card())


def _backbone() -> keras.Model:
    """The fine-tuned detector's backbone (pretrained_backbone says which file): (N, S, S, 3) BGR
    0..255 -> the inputs of the layers named in BACKBONE_INPUTS (its stride-16 and stride-32
    features, 64 channels each), all trainable."""
    from maskbatch.train.yunet_graph import build_keras

    path, _ = read_tuned_card()
    full = build_keras(path)
    features = [full.get_layer(name).input for name in BACKBONE_INPUTS]
    return keras.Model(full.input, features, name="yunet_backbone")


def build_backbone(seed: int = 0, n_classes: int = 2) -> keras.Model:
    """The face detector's backbone (about 35k parameters, pretrained) with a small head: a 3x3
    conv to 128 channels on its stride-32 output, global average pooling of that and of the
    stride-16 features, one sigmoid unit. Same augmentation as compact."""
    size = INPUT_SIZES["backbone"]
    inputs = keras.Input((size, size, 3), name="input")
    x = colour_augmentation(seed)(inputs)
    x = layers.Rescaling(255.0)(x)  # preprocess gives x/255; YuNet was trained on 0..255
    stride16, stride32 = _backbone()(x)
    head = _conv(stride32, 128)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(stride16),
                              layers.GlobalAveragePooling2D()(head)])
    x = layers.Dropout(0.3, seed=seed)(x)
    outputs = _head(x, n_classes)
    return keras.Model(inputs, outputs, name="backbone")


NOTEBOOK_AUGMENTATION = "RandomRotation(15 deg), RandomTranslation(0.1, 0.1), RandomFlip(horizontal)"
AUGMENTATIONS = {"seed": NOTEBOOK_AUGMENTATION,
                 "compact": f"{NOTEBOOK_AUGMENTATION}, {COLOUR_AUGMENTATION}",
                 "backbone": f"{NOTEBOOK_AUGMENTATION}, {COLOUR_AUGMENTATION}"}


def average_models(models: list[keras.Model], size: int) -> keras.Model:
    """One model whose output is the mean of `models`' outputs, named as theirs (an ensemble
    of nets; they are renamed member0, member1, ... since nested models need unique names). Each
    member keeps its own augmentation layers: identity at inference, so the exported graph is the
    members' inference graphs and their mean."""
    if len(models) == 1:
        return models[0]
    for i, member in enumerate(models):
        member.name = f"member{i}"
    inputs = keras.Input((size, size, 3), name="input")
    mean = layers.Average(name=models[0].output_names[0])([m(inputs, training=False) for m in models])
    return keras.Model(inputs, mean, name="ensemble")


def build_model(arch: str, seed: int = 0, n_classes: int = 2) -> keras.Model:
    """A fresh, uncompiled model of architecture `arch` (one of ARCHITECTURES); `n_classes` 3
    or more gives it a softmax head instead of the sigmoid unit."""
    if arch == "seed":
        return build_seed(seed, n_classes)
    if arch == "compact":
        return build_compact(seed, n_classes)
    if arch == "backbone":
        return build_backbone(seed, n_classes)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
