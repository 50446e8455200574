"""`medrobust reproduce`: the paper's experiment as one resumable command.

For each backbone, baseline and attention, each seed: train with the paper's recipe, export into
`<out>/model-repo`, audit with each attack (L-inf PGD by default; e.g. also AutoAttack's ensemble) on
one shared audit set over the paper's epsilon grid through the embedded backend; then draw the
paper's figures, the results table and the manifest (see `reproduce_grid` and `reproduce_report`).
Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path

from medrobust.commands import positive_float, positive_int
from training.contract.attacks import DEFAULT_ATTACK, attack_names, attack_spec
from training.contract.card import BACKBONES, MIN_INPUT_SIZE, Backbone
from training.contract.config import AttackConfig, ReproduceConfig, default_of, parse_attacks, read_config

DEFAULT_SIZE = 64


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers, got {text!r}")
    return values


def _backbones(text: str) -> tuple[str, ...]:
    names = tuple(v for v in text.replace(",", " ").split() if v)
    unknown = [n for n in names if n not in BACKBONES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct backbones from {', '.join(BACKBONES)}, got {text!r}")
    return names


def _variants(text: str) -> tuple[str, ...]:
    names = tuple(v for v in text.replace(",", " ").split() if v)
    if not names or any(n not in ("baseline", "attention") for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected baseline, attention or both, got {text!r}")
    return names


def _attacks(text: str) -> tuple[str, ...]:
    try:
        names = parse_attacks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    other = [n for n in names if attack_spec(n).norm != "linf"]
    if other:  # the grid's epsilons are L-inf radii
        raise argparse.ArgumentTypeError(f"expected L-inf attacks (the epsilon grid is L-inf), got {', '.join(other)} in {text!r}")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiment: train, audit and plot attention against baseline over seeds",
        description=(
            "Train every backbone with and without soft attention for each seed (the paper's recipe), audit each "
            "on one shared audit set over the paper's epsilon grid, and write the figures, results table and "
            "manifest. Rerunning with the same --out resumes where it stopped."
        ),
    )
    p.add_argument("--task", help="task name, e.g. derm (default: the dataset's)")
    p.add_argument("--dataset", required=True, help="KIND:PATH, e.g. ham10000:DIR, medmnist:FILE.npz, synthetic")
    p.add_argument("--backbones", type=_backbones, default=BACKBONES, help=f"comma-separated (default: {','.join(BACKBONES)})")
    p.add_argument("--variants", type=_variants, default=("baseline", "attention"),
                   help="baseline,attention (default: both; one of them to split a grid over processes, then --merge)")
    p.add_argument("--image-size", type=positive_int,
                   help=f"input size for every backbone (default: {DEFAULT_SIZE}, or the backbone's minimum if larger)")
    p.add_argument("--epochs", type=positive_int, default=300, help="upper bound; early stopping usually ends sooner (default: 300, the paper's)")
    p.add_argument("--limit", type=positive_int, help="cap the training images per model (a seeded subset per seed)")
    p.add_argument("--epoch-fraction", type=float, default=1.0, help="fraction of the training set per epoch (the paper used 0.1 for skin lesions)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="training batch size (default: 32, as the recipe)")
    p.add_argument(
        "--learning-rate", type=positive_float, default=0.01,
        help="Adam learning rate (default: 0.01, the paper's, which assumes pretrained backbones; from random "
             "initialisation 0.001 trains where 0.01 diverges)",
    )
    p.add_argument("--weights", help="backbone weights: imagenet, or a local weights file (default: random initialisation)")
    p.add_argument("--seeds", type=_int_list, default=(0, 1, 2), help="training seeds (default: 0,1,2)")
    p.add_argument("--samples", type=positive_int, default=256, help="audit images, the same for every model (default: 256)")
    p.add_argument("--epsilons", help="comma-separated L-inf epsilons on [0,1] pixels (default: the paper's grid; 0 is always added)")
    p.add_argument(
        "--attacks", type=_attacks, default=(DEFAULT_ATTACK,),
        help=f"comma-separated, each cell audited with each: {', '.join(attack_names(norm='linf'))} "
             "(default: linf_pgd, the paper's; ensemble = AutoAttack's apgd_ce, apgd_t, then square on the images "
             "still standing). Adding an attack to a finished run audits its models again, training nothing",
    )
    pgd_steps = attack_spec(DEFAULT_ATTACK).steps
    p.add_argument("--steps", type=positive_int, default=pgd_steps, help=f"PGD steps (default: {pgd_steps})")
    p.add_argument("--apgd-steps", type=positive_int, help=f"APGD iterations, alone and in the ensemble (default: {attack_spec('apgd_ce').steps})")
    p.add_argument(
        "--queries", type=positive_int,
        help=f"Square Attack's queries per image and epsilon, alone and in the ensemble (default: {AttackConfig.queries})",
    )
    p.add_argument("--out", type=Path,
                   help=f"state, model repository and checkpoints (default: MEDROBUST_REPRODUCE_OUT or ./{default_of(ReproduceConfig, 'out')})")
    p.add_argument("--report-dir", type=Path, help="where the figures, tables and manifest go (default: --out)")
    p.add_argument(
        "--merge", type=Path, nargs="+", default=(), metavar="OUT",
        help="also report the finished cells of these other --out directories run with the same settings "
             "(e.g. seeds run in parallel processes)",
    )
    p.add_argument("--report-only", action="store_true", help="train and audit nothing: redraw the report from what has finished")
    p.set_defaults(handler=_reproduce, check=_check)


def _check(args: argparse.Namespace) -> None:
    """What `reproduce` can refuse before TensorFlow is imported: the dataset spec, the sizes, the grid."""
    from medrobust.commands import UsageError
    from training.dataset_types import DatasetError
    from training.datasets import check_spec

    if not 0.0 < args.epoch_fraction <= 1.0:
        raise UsageError(f"expected --epoch-fraction in (0, 1], got {args.epoch_fraction}")
    try:
        check_spec(args.dataset)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    _config(args, args.task or "task")  # the dataset's task is not known yet; nothing checked depends on it
    try:
        read_config(ReproduceConfig, vars(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _config(args: argparse.Namespace, dataset_task: str):
    from medrobust.commands import UsageError
    from medrobust.reproduce_grid import GridConfig
    from training.contract.config import PAPER_EPSILONS, parse_epsilons

    sizes = []
    for backbone in args.backbones:
        minimum = MIN_INPUT_SIZE[Backbone(backbone)]
        size = args.image_size or max(DEFAULT_SIZE, minimum)
        if size < minimum:
            raise UsageError(f"{backbone} needs --image-size >= {minimum}, got {size}; run it separately with a larger size")
        sizes.append(size)
    try:
        epsilons = parse_epsilons(["0", *(args.epsilons.replace(",", " ").split() if args.epsilons else PAPER_EPSILONS)])
        return GridConfig(
            task=args.task or dataset_task, dataset=args.dataset, backbones=tuple(args.backbones), image_sizes=tuple(sizes),
            epochs=args.epochs, limit=args.limit, seeds=tuple(args.seeds), samples=args.samples, epsilons=epsilons,
            steps=args.steps, epoch_fraction=args.epoch_fraction, batch_size=args.batch_size, learning_rate=args.learning_rate,
            variants=tuple(args.variants), weights=args.weights,
            attacks=tuple(args.attacks), apgd_steps=args.apgd_steps, queries=args.queries,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _reproduce(args: argparse.Namespace) -> int:
    from medrobust.commands import UsageError
    from medrobust.reproduce_grid import GridState, StateMismatch, boot_id, cell_audits, merged, run_grid
    from medrobust.reproduce_report import environment, write_report
    from training.dataset_types import DatasetError
    from training.datasets import load_dataset

    try:
        dataset = load_dataset(args.dataset, seed=0)  # one split for every seed: seeds vary training only
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    if dataset.synthetic:
        print(f"note: {args.dataset} is SYNTHETIC stand-in data, not medical images; these results are a demo")
    config = _config(args, dataset.default_task)
    out = read_config(ReproduceConfig, vars(args)).out
    try:
        state = GridState.open(out, config)
        others = [GridState.open(other, config) for other in args.merge]
    except StateMismatch as exc:
        raise UsageError(str(exc)) from None
    for part in (state, *others):
        part.close_abandoned()
    invocation = {
        "argv": list(sys.argv),
        "pid": os.getpid(),
        "boot_id": boot_id(),
        "arguments": {k: _jsonable(v) for k, v in vars(args).items() if not callable(v)},  # not the handler, nor its check
        "seeds": list(config.seeds),
        "backbones": list(config.backbones),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": environment(),
        "status": "running",
    }
    state.doc["invocations"].append(invocation)
    state.save()
    started = time.perf_counter()
    interactive = sys.stderr.isatty()
    # Training's progress is a bar on a terminal and one line per epoch in a log file (training.progress).
    verbose = 1
    status = "failed"
    worked = []
    try:
        if not args.report_only:
            worked = run_grid(config, out=out, dataset=dataset, state=state, verbose=verbose, progress=interactive)
        status = "succeeded"
    except BaseException as exc:
        status = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        invocation.update(
            status=status, finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            wall_seconds=round(time.perf_counter() - started, 1), cells_worked_on=[c.key for c in worked],
        )
        state.save()
        report_dir = args.report_dir or out
        doc = merged(state, others)
        if any(cell_audits(c) for c in doc["cells"].values()):
            written = write_report(doc, report_dir, class_names=dataset.class_names)
            logging.getLogger(__name__).info("wrote %s", ", ".join(str(p) for p in written))
    return 0
