"""`medrobust train`, `medrobust export` and `medrobust models` (no heavy imports at import time)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from medrobust.commands import positive_float, positive_int
from training.contract.card import BACKBONES, MIN_INPUT_SIZE, Backbone
from training.contract.config import TrainConfig, default_of, read_config

_default = lambda name: default_of(TrainConfig, name)  # noqa: E731  (defaults are written once, on the config)


def _model_repo_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repo", type=Path, help=f"model repository (default: MEDROBUST_MODEL_REPO or {_default('model_repo')})")


def _settings(args: argparse.Namespace) -> TrainConfig:  # also the `check` of export and models
    """The command's TrainConfig: flags over `MEDROBUST_*` over defaults."""
    from medrobust.commands import UsageError

    try:
        return read_config(TrainConfig, vars(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train one of the paper's models and export it as a new version")
    train.add_argument("--task", help="task name, e.g. derm (default: the dataset's)")
    train.add_argument("--dataset", required=True, help="KIND:PATH, e.g. ham10000:DIR, medmnist:FILE.npz, synthetic")
    train.add_argument("--backbone", choices=BACKBONES, default=Backbone.RESNET50.value,
                       help=f"the network under the head (default: {Backbone.RESNET50.value})")
    variant = train.add_mutually_exclusive_group()
    variant.add_argument("--attention", dest="attention", action="store_true", default=True, help="with soft attention (default)")
    variant.add_argument("--baseline", dest="attention", action="store_false", help="without soft attention")
    variant.add_argument("--all-variants", action="store_true", help="train all four: both backbones, with and without attention")
    train.add_argument("--image-size", type=positive_int, default=64,
                       help="input side in pixels, images are resized to it (default: 64; inception_resnet_v2 needs 75)")
    train.add_argument("--epochs", type=positive_int, default=300, help="upper bound; early stopping usually ends sooner (default: 300, the paper's)")
    train.add_argument("--limit", type=positive_int, help="cap the number of training images (quick runs)")
    train.add_argument("--batch-size", type=positive_int, default=32, help="images per training step (default: 32)")
    train.add_argument("--learning-rate", type=positive_float, default=0.01, help="Adam's learning rate (default: 0.01, the paper's)")
    train.add_argument("--patience", type=positive_int, default=40,
                       help="epochs without a better validation loss before stopping (default: 40, the paper's)")
    train.add_argument("--epoch-fraction", type=float, default=1.0,
                       help="fraction of the training set seen per epoch, in (0, 1] (the paper used 0.1 for skin lesions)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the batches (default: 0)")
    train.add_argument("--weights", default=None, help="backbone weights: imagenet, or a local weights file (default: random)")
    train.add_argument("--workdir", type=Path, help=f"checkpoints (default: MEDROBUST_WORKDIR or {_default('workdir')})")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    train.add_argument("--serving-root",
                       help="where TF Serving sees the repository (for models.config), e.g. /models (default: MEDROBUST_SERVING_ROOT)")
    _model_repo_arg(train)
    train.set_defaults(handler=_train, check=_check_train)

    export = subparsers.add_parser("export", help="re-export a trained .keras checkpoint as a new version")
    export.add_argument("checkpoint", type=Path, help="a .keras file written by medrobust train")
    export.add_argument("--task", help="task name (default: from the checkpoint's card)")
    export.add_argument("--class-names", help="comma-separated class names (default: from the checkpoint's card)")
    export.add_argument("--serving-root", help="where TF Serving sees the repository (default: MEDROBUST_SERVING_ROOT)")
    _model_repo_arg(export)
    export.set_defaults(handler=_export, check=_settings)

    models = subparsers.add_parser("models", help="list the models and versions in a repository")
    _model_repo_arg(models)
    models.add_argument("--json", action="store_true", help="print one JSON document")
    models.set_defaults(handler=_models, check=_settings)


def _check_train(args: argparse.Namespace) -> None:
    """Every value `train` can refuse, before TensorFlow is imported: the config, the sizes, the dataset spec."""
    from medrobust.commands import UsageError
    from training.dataset_types import DatasetError
    from training.datasets import check_spec

    _settings(args)
    if not 0.0 < args.epoch_fraction <= 1.0:
        raise UsageError(f"expected an epoch fraction in (0, 1], got {args.epoch_fraction}")
    for backbone in BACKBONES if args.all_variants else (args.backbone,):
        minimum = MIN_INPUT_SIZE[Backbone(backbone)]
        if args.image_size < minimum:
            raise UsageError(f"{backbone} needs --image-size >= {minimum}, got {args.image_size}")
    try:
        check_spec(args.dataset)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None


def _train(args: argparse.Namespace) -> int:
    from medrobust.commands import UsageError
    from training.dataset_types import DatasetError
    from training.datasets import load_dataset
    from training.recipe import Recipe
    from training.workflow import ALL_VARIANTS, Variant, train_and_export

    variants = ALL_VARIANTS if args.all_variants else (Variant(args.backbone, args.attention),)
    try:
        recipe = Recipe(
            epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, patience=args.patience,
            epoch_fraction=args.epoch_fraction, seed=args.seed,
        )
        dataset = load_dataset(args.dataset, seed=args.seed)
    except (DatasetError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if dataset.synthetic:
        print(f"note: {args.dataset} is SYNTHETIC stand-in data, not medical images; models trained on it are demos")
    task = args.task or dataset.default_task
    settings = _settings(args)
    for i, v in enumerate(variants, 1):
        train_and_export(
            dataset, v, task=task, image_size=args.image_size, model_repo=settings.model_repo, recipe=recipe,
            limit=args.limit, weights=args.weights, workdir=settings.workdir, resume=args.resume,
            serving_root=settings.serving_root, position=(i, len(variants)),
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from medrobust.commands import UsageError

    if not args.checkpoint.is_file():
        raise UsageError(f"expected a .keras checkpoint file, got {args.checkpoint} (no such file)")
    sidecar = args.checkpoint.with_name(args.checkpoint.stem + ".card.json")
    card = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    task = args.task or card.get("task")
    class_names = args.class_names.split(",") if args.class_names else card.get("class_names")
    if not task or not class_names:
        raise UsageError(f"no card beside {args.checkpoint} ({sidecar.name}): pass --task and --class-names")
    import keras

    import training.models  # noqa: F401  (registers the custom layers for loading)
    from training.export import export_model

    settings = _settings(args)
    model = keras.saving.load_model(args.checkpoint)
    result = export_model(
        model, settings.model_repo, task=task, class_names=class_names, dataset=card.get("dataset"),
        metrics=card.get("metrics"), training=card.get("training"), serving_root=settings.serving_root,
    )
    print(f"exported {result.model} version {result.version} to {result.path}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from medrobust.commands import require_model_repo
    from training.contract.repository import list_models

    repo = _settings(args).model_repo
    require_model_repo(repo)
    models = list_models(repo)
    if args.json:
        print(json.dumps([{"name": m.name, "versions": list(m.versions), "card": m.card} for m in models], indent=2))
        return 0
    if not models:
        print(f"no models in {os.fspath(repo)}")
        return 0
    print(f"{'model':40} {'versions':>10} {'task':>10} {'input':>7} {'val acc':>8} {'dataset':>10}")
    for m in models:
        val = (m.card.get("metrics") or {}).get("val") or {}
        acc = val.get("accuracy")
        print(
            f"{m.name:40} {','.join(map(str, m.versions)):>10} {m.card.get('task', ''):>10} "
            f"{m.card['input_size'][0]:>7} {acc if acc is None else f'{acc:.3f}':>8} "
            f"{(m.card.get('dataset') or {}).get('kind', ''):>10}"
        )
    return 0
