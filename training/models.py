"""The paper's four classifiers: ResNet-50 and InceptionResNetV2, each with or without soft attention.

Every model takes [0, 1] RGB at its input size (the backbone's own normalisation is a layer inside
it, so an epsilon means the same thing for every model) and returns logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from training.contract.card import MIN_INPUT_SIZE, Backbone
from training.soft_attention import SoftAttention

__all__ = [
    "Backbone", "BackboneSpec", "GradcamTap", "build_model", "SoftAttention", "model_name", "spec_for",
    "describe_model", "gradcam_tap",
]


@dataclass(frozen=True)
class BackboneSpec:
    """What the heads and the Grad-CAM need to know about a backbone."""

    backbone: Backbone
    tap_layer: str  # the feature map that attention and the head read (a stable name)
    normalisation: str  # "caffe" (ResNet: BGR, ImageNet means on [0,255]) or "tf" ([-1, 1])
    min_size: int
    # Where Grad-CAM may look, deepest first: stage outputs with stable names, none shallower than
    # the third stage (earlier maps answer edges and colour, not the class). The first with a grid of
    # at least MIN_GRADCAM_GRID positions a side is taken (see gradcam_tap).
    gradcam_layers: tuple[str, ...] = ()


_SPECS = {
    Backbone.RESNET50: BackboneSpec(
        Backbone.RESNET50, "conv5_block3_out", "caffe", MIN_INPUT_SIZE[Backbone.RESNET50],
        gradcam_layers=("conv5_block3_out", "conv4_block6_out", "conv3_block4_out"),  # stride 32, 16, 8
    ),
    # The paper drops the final 28 layers of Keras' InceptionResNetV2 (an index that falls inside
    # block8_9's branches); we tap the output of that same residual block by its stable name,
    # because auto-generated names such as batch_normalization_195 change with every model built.
    # Grad-CAM may look no deeper than the head's tap: layers past it are not in the model.
    Backbone.INCEPTION_RESNET_V2: BackboneSpec(
        Backbone.INCEPTION_RESNET_V2, "block8_9_ac", "tf", MIN_INPUT_SIZE[Backbone.INCEPTION_RESNET_V2],
        gradcam_layers=("block8_9_ac", "block17_20_ac", "block35_10_ac"),  # the last block of each stage
    ),
}

_IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)

# A Grad-CAM map of fewer positions cannot say where in the image the evidence is: ResNet-50's last
# stage gives 1x1 at 32 px and 2x2 at 64 px. 7x7 is what the original Grad-CAM read at 224 px.
MIN_GRADCAM_GRID = 7


def spec_for(backbone: str | Backbone) -> BackboneSpec:
    """The spec of a backbone named as on the command line."""
    try:
        return _SPECS[Backbone(backbone)]
    except ValueError:
        known = ", ".join(b.value for b in Backbone)
        raise ValueError(f"unknown backbone: expected one of {known}, got {backbone!r}") from None


def model_name(task: str, backbone: str | Backbone, attention: bool) -> str:
    """`<task>-<backbone>-<attention|baseline>`, the folder TF Serving serves it from."""
    import re

    if not re.fullmatch(r"[a-z0-9_]+", task):
        raise ValueError(f"task names are lower-case letters, digits and underscores; got {task!r}")
    return f"{task}-{Backbone(backbone).value}-{'attention' if attention else 'baseline'}"


@keras.saving.register_keras_serializable(package="medrobust")
class BackboneNormalisation(keras.layers.Layer):
    """[0, 1] RGB to what a Keras application expects ("caffe": BGR minus ImageNet means; "tf": [-1, 1])."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise ValueError(f"BackboneNormalisation expects mode 'caffe' or 'tf', got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        if self.mode == "tf":
            return inputs * 2.0 - 1.0
        bgr = keras.ops.flip(inputs, axis=-1) * 255.0
        return bgr - keras.ops.convert_to_tensor(_IMAGENET_BGR_MEANS, dtype=inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def build_model(
    backbone: str | Backbone,
    *,
    attention: bool,
    num_classes: int,
    image_size: int,
    weights: str | None = None,
    heads: int = 16,
    dropout: float = 0.5,
) -> keras.Model:
    """Build one of the paper's classifiers; the output is logits [N, num_classes].

    `weights` is None (random initialisation), "imagenet" (downloaded by Keras where a network
    exists) or the path of a backbone weights file (no top).
    """
    spec = spec_for(backbone)
    if num_classes < 2:
        raise ValueError(f"expected num_classes >= 2, got {num_classes}")
    if image_size < spec.min_size:
        raise ValueError(f"{spec.backbone.value} needs image_size >= {spec.min_size}, got {image_size}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = BackboneNormalisation(spec.normalisation, name="normalisation")(inputs)
    app = (
        keras.applications.ResNet50
        if spec.backbone is Backbone.RESNET50
        else keras.applications.InceptionResNetV2
    )
    base = app(include_top=False, weights=weights, input_tensor=x)
    features = base.get_layer(spec.tap_layer).output

    if attention:
        attended, _maps = SoftAttention(heads=heads, name="soft_attention")(features)
        attended = keras.layers.MaxPooling2D(2, padding="same", name="attended_pool")(attended)
        pooled = keras.layers.MaxPooling2D(2, padding="same", name="features_pool")(features)
        x = keras.layers.Concatenate(name="attention_concat")([pooled, attended])
        x = keras.layers.Activation("relu", name="head_relu")(x)
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    elif spec.backbone is Backbone.INCEPTION_RESNET_V2:
        x = keras.layers.Activation("relu", name="head_relu")(features)
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    else:
        x = features

    if spec.backbone is Backbone.RESNET50:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    else:
        x = keras.layers.Flatten(name="head_flatten")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    name = f"{spec.backbone.value}_{'attention' if attention else 'baseline'}"
    return keras.Model(inputs, logits, name=name)


@dataclass(frozen=True)
class GradcamTap:
    """The layer Grad-CAM reads, the grid of positions it gives at the model's input size, and,
    when that grid is below MIN_GRADCAM_GRID a side, why."""

    layer: str
    grid: tuple[int, int]
    note: str | None = None


def gradcam_tap(model: keras.Model, spec: BackboneSpec) -> GradcamTap:
    """The deepest of the backbone's Grad-CAM layers with at least 7x7 positions at this input size;
    else the one with the largest grid (the shallowest allowed), with a note saying so."""
    grids = []
    for name in spec.gradcam_layers:
        shape = model.get_layer(name).output.shape
        grids.append((name, (int(shape[1]), int(shape[2]))))
    for name, grid in grids:
        if min(grid) >= MIN_GRADCAM_GRID:
            return GradcamTap(name, grid)
    name, grid = grids[-1]
    size = int(model.input_shape[1])
    return GradcamTap(
        name, grid,
        note=(
            f"{grid[0]}x{grid[1]} positions at {size} px: no {spec.backbone.value} layer allowed for Grad-CAM "
            f"gives {MIN_GRADCAM_GRID}x{MIN_GRADCAM_GRID} at this input size; a larger --image-size does"
        ),
    )


@dataclass(frozen=True)
class ModelDescription:
    """What an exported or checkpointed model is, read off its layers."""

    backbone: Backbone
    attention: bool
    image_size: int
    num_classes: int
    tap_layer: str
    gradcam: GradcamTap


def describe_model(model: keras.Model) -> ModelDescription:
    """Recognise a model built by `build_model` (for re-export from a checkpoint)."""
    names = {layer.name for layer in model.layers}
    for spec in _SPECS.values():
        if spec.tap_layer in names:
            break
    else:
        raise ValueError(
            "expected a model built by medrobust (a ResNet-50 or InceptionResNetV2 tap layer), "
            f"got layers {sorted(names)[:8]}..."
        )
    return ModelDescription(
        backbone=spec.backbone,
        attention="soft_attention" in names,
        image_size=int(model.input_shape[1]),
        num_classes=int(model.output_shape[-1]),
        tap_layer=spec.tap_layer,
        gradcam=gradcam_tap(model, spec),
    )
