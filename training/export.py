"""Export a trained Keras model as the SavedModel contract (see ARCHITECTURE.md).

Signatures:
  serving_default(image)            -> logits, probabilities, class_id
  gradcam(image)                    -> probabilities, class_id, heatmap, heatmap_grid [, attention_map]
  vjp(image, cotangent)             -> logits, gradient  (cotangent . d logits / d image)
Beside the variables: assets.extra/model_card.json and assets.extra/tf_serving_warmup_requests.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.contract import repository
from training.contract.card import CARD_PATH, CARD_SCHEMA_VERSION, code_version
from training.models import describe_model, model_name

_RELATIVE_RESOLUTION = 1e-6  # well above float32's 6e-8: rounding noise is not a location


@dataclass(frozen=True)
class ExportResult:
    model: str
    version: int
    path: Path
    card: Mapping[str, Any]


def _unit_range(maps: tf.Tensor) -> tf.Tensor:
    """[N, H, W] scaled per map so its minimum is 0 and its maximum 1; finite by construction.

    A map whose spread is below float32 resolution (a constant map: ResNet-50's 1x1 feature map at
    32 px gives one) carries no location and becomes all zeros. The spread is tested, not padded
    with an epsilon: the graph optimiser may regroup `(max + eps) - min`, and 16 + 1e-8 == 16 in
    float32, which turned such maps into 0/0 = NaN in the exported signature.
    """
    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    spread = high - low
    resolvable = spread > _RELATIVE_RESOLUTION * (tf.abs(high) + tf.abs(low))
    scaled = tf.math.divide_no_nan(maps - low, tf.where(resolvable, spread, tf.ones_like(spread)))
    scaled = tf.where(resolvable & tf.math.is_finite(scaled), scaled, tf.zeros_like(scaled))
    return tf.clip_by_value(scaled, 0.0, 1.0)


def _max_scaled(cam: tf.Tensor) -> tf.Tensor:
    """[N, h, w] divided by each map's maximum, so an all-zero map stays zero; finite, in [0, 1]."""
    high = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    scaled = tf.math.divide_no_nan(cam, high)
    return tf.clip_by_value(tf.where(tf.math.is_finite(scaled), scaled, tf.zeros_like(scaled)), 0.0, 1.0)


def gradcam_grid(features: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """Grad-CAM at the tap layer's resolution: [N, h, w, C] -> [N, h, w], rectified, in [0, 1].

    Channel weights are the spatially averaged gradients of the class score.
    """
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return _max_scaled(tf.nn.relu(tf.reduce_sum(features * weights, axis=-1)))


def heatmap_from_grid(grid: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """A Grad-CAM grid [N, h, w] resized (bilinear) to the input [N, H, W] and scaled to its maximum."""
    return _max_scaled(tf.image.resize(grid[..., None], size, method="bilinear")[..., 0])


def attention_overview(maps: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Soft-attention heads [N, h, w, heads] summed and scaled to [0, 1] at input size."""
    total = tf.reduce_sum(maps, axis=-1, keepdims=True)
    return _unit_range(tf.image.resize(total, size, method="bilinear")[..., 0])


class _Contract(tf.Module):
    """The three signatures over one Keras model."""

    def __init__(self, model: keras.Model, tap_layer: str, attention: bool):
        super().__init__(name="medrobust_contract")
        self.model = model
        outputs = [model.get_layer(tap_layer).output, model.output]
        if attention:
            outputs.append(model.get_layer("soft_attention").output[1])
        self.explainer = keras.Model(model.input, outputs, name=f"{model.name}_explainer")
        self.attention = attention
        h, w = (int(s) for s in model.input_shape[1:3])
        self.size = (h, w)
        k = int(model.output_shape[-1])
        image = tf.TensorSpec([None, h, w, 3], tf.float32, name="image")
        cotangent = tf.TensorSpec([None, k], tf.float32, name="cotangent")
        self.serving_default = tf.function(self._serve, input_signature=[image])
        self.gradcam = tf.function(self._gradcam, input_signature=[image])
        self.vjp = tf.function(self._vjp, input_signature=[image, cotangent])

    def _serve(self, image):
        logits = self.model(image, training=False)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "class_id": tf.argmax(logits, axis=-1, output_type=tf.int64),
        }

    def _gradcam(self, image):
        with tf.GradientTape() as tape:
            outs = self.explainer(image, training=False)
            features, logits = outs[0], outs[1]
            class_id = tf.argmax(logits, axis=-1, output_type=tf.int64)
            score = tf.reduce_sum(logits * tf.one_hot(class_id, tf.shape(logits)[-1]), axis=-1)
        grads = tape.gradient(score, features)
        grid = gradcam_grid(features, grads)
        result = {
            "probabilities": tf.nn.softmax(logits),
            "class_id": class_id,
            "heatmap": heatmap_from_grid(grid, self.size),
            # The map before resizing: what the tap layer can resolve, for programs to use as data.
            "heatmap_grid": grid,
        }
        if self.attention:
            result["attention_map"] = attention_overview(outs[2], self.size)
        return result

    def _vjp(self, image, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(image)
            logits = self.model(image, training=False)
            total = tf.reduce_sum(logits * cotangent)
        return {"logits": logits, "gradient": tape.gradient(total, image)}


def _warmup_records(name: str, size: tuple[int, int], num_classes: int) -> list[bytes]:
    """One PredictionLog per signature, so TF Serving traces each before taking traffic."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    image = tf.make_tensor_proto(np.full((1, *size, 3), 0.5, np.float32))
    cotangent = tf.make_tensor_proto(np.ones((1, num_classes), np.float32))
    records = []
    for signature, inputs in (
        ("serving_default", {"image": image}),
        ("gradcam", {"image": image}),
        ("vjp", {"image": image, "cotangent": cotangent}),
    ):
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
        for key, proto in inputs.items():
            request.inputs[key].CopyFrom(proto)
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def build_card(
    model: keras.Model,
    *,
    task: str,
    class_names: Sequence[str],
    dataset: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card: everything a server, front end or audit needs to know besides the weights."""
    desc = describe_model(model)
    if len(class_names) != desc.num_classes:
        raise ValueError(f"expected {desc.num_classes} class names for a {desc.num_classes}-class model, got {len(class_names)}")
    name = model_name(task, desc.backbone, desc.attention)
    gradcam_outputs = ["probabilities", "class_id", "heatmap", "heatmap_grid"] + (
        ["attention_map"] if desc.attention else []
    )
    tap = desc.gradcam
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": name,
        "task": task,
        "backbone": desc.backbone.value,
        "attention": desc.attention,
        "class_names": list(class_names),
        "num_classes": desc.num_classes,
        "input_size": [desc.image_size, desc.image_size],
        "pixel_range": [0.0, 1.0],
        "gradcam_layer": tap.layer,
        "gradcam_grid": list(tap.grid),
        **({"gradcam_note": tap.note} if tap.note else {}),
        "signatures": {
            "serving_default": {"inputs": ["image"], "outputs": ["logits", "probabilities", "class_id"]},
            "gradcam": {"inputs": ["image"], "outputs": gradcam_outputs},
            "vjp": {"inputs": ["image", "cotangent"], "outputs": ["logits", "gradient"]},
        },
        "parameters": int(model.count_params()),
        "dataset": dict(dataset or {}),
        "metrics": dict(metrics or {}),
        "training": dict(training or {}),
        "code_version": code_version(),
    }


def export_model(
    model: keras.Model,
    repo: str | Path,
    *,
    task: str,
    class_names: Sequence[str],
    dataset: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    serving_root: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write `model` as the next version of `<task>-<backbone>-<variant>` and refresh models.config;
    `log` hears one line per step, with its time (saving traces every signature: the long one)."""
    repo = Path(repo)
    card = build_card(model, task=task, class_names=class_names, dataset=dataset, metrics=metrics, training=training)
    contract = _Contract(model, card["gradcam_layer"], card["attention"])
    staged = repository.staging_dir(repo)
    started = time.perf_counter()

    def step(what: str) -> None:
        if log is not None:
            log(f"exporting {card['name']} [{time.perf_counter() - started:.1f} s]: {what}")

    try:
        step("tracing and saving serving_default, gradcam and vjp")
        tf.saved_model.save(
            contract,
            str(staged),
            signatures={
                "serving_default": contract.serving_default,
                "gradcam": contract.gradcam,
                "vjp": contract.vjp,
            },
        )
        step("writing the model card and TF Serving warmup records")
        extra = staged / "assets.extra"
        extra.mkdir(exist_ok=True)
        with tf.io.TFRecordWriter(str(staged / repository.WARMUP_PATH)) as writer:
            for record in _warmup_records(card["name"], contract.size, card["num_classes"]):
                writer.write(record)
        with repository.locked(repo):
            card["exported_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            version_hint = (repository.versions_of(repo / card["name"]) or (0,))[-1] + 1
            card["version"] = version_hint
            (staged / CARD_PATH).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
            version, path = repository.publish_version(repo, card["name"], staged)
            repository.write_models_config(repo, serving_root)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    step(f"published version {version}")
    return ExportResult(card["name"], version, path, card)
