"""Every process's configuration, and the one reader that builds it: flags over `MEDROBUST_*` over defaults.

One frozen dataclass per process kind (`ServiceConfig` for the front end, `AuditConfig` with its
`AttackConfig` for audits, `TrainConfig`, `ReproduceConfig`, `DataConfig`). Each default is
written once, on its field; the field also names its environment variable. `read_config` is the
only code that reads `MEDROBUST_*` variables: commands call it once, at the process edge, and hand
the frozen result down. Validation happens while reading, so a bad value is a usage error that
names what the user typed: the flag when a flag gave it, else the variable.

Nothing here imports the rest of the project or anything heavy: `medrobust --help` reads defaults
from these classes.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from training.contract.attacks import DEFAULT_ATTACK, attack_names, attack_spec, default_budget

# The paper's grid on [0, 1] pixels; written as decimals so labels are exact ("0.00125", not 0.00125000001).
PAPER_EPSILONS = ("0", "0.00125", "0.0025", "0.005", "0.01", "0.02", "0.04", "0.08", "0.16", "0.32")
DEFAULT_SCHEDULE = "0 3 * * *"  # nightly at 03:00
DEFAULT_DATABASE_URL = "sqlite:///.medrobust/audits.sqlite"
DEFAULT_ARTEFACTS = ".medrobust/audits"
# How long a process waits at start for its database server (it may start later: compose, Kubernetes).
DATABASE_WAIT_SECONDS = 60.0
MAX_PIXELS = 50_000_000  # the largest decoded image, everywhere an image is decoded
GRPC_DEADLINE_SECONDS = 10.0  # per TF Serving call, for the front end and the audit alike
# The largest batch one Predict may carry: TF Serving rejects a larger one (INVALID_ARGUMENT, "Task size
# ... is larger than maximum input batch size") under deploy/tf-serving/batching.config's max_batch_size.
TF_SERVING_MAX_BATCH = 32
ENV_PREFIX = "MEDROBUST_"
# Where every command looks for the model repository when neither --model-repo nor
# MEDROBUST_MODEL_REPO names one (and no TF Serving address is given): `medrobust train` writes
# there, so the next command, run in the same folder, finds it.
DEFAULT_MODEL_REPO = Path("model-repo")


class ConfigError(ValueError):
    """A setting the process cannot run with; the message starts with the flag or variable that gave it."""


class FieldError(ValueError):
    """A field failed validation; `read_config` turns it into a ConfigError naming the field's source."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def setting(
    default: Any = MISSING,
    env: str | None = None,
    *,
    parse: Callable[[str], Any] | None = None,
    dest: str | None = None,
    excludes: tuple[str, ...] = (),
    factory: Callable[[], Any] | None = None,
    nested: type | None = None,
) -> Any:
    """A config field: its default, its `MEDROBUST_<env>` variable, how that text is parsed.

    `dest` is the flag's argparse name when it differs from the field's; `excludes` lists fields
    whose variables are ignored when this field's flag is given (`--model-repo` beats
    `MEDROBUST_TF_SERVING`); `nested` reads a whole config class from the same flags and variables.
    """
    if parse is None and default is not MISSING and default is not None:
        parse = type(default)
    metadata = {"env": env, "parse": parse or str, "dest": dest, "excludes": excludes, "nested": nested}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(cls: type[DataclassInstance], name: str) -> Any:
    """A field's default, for help texts (so no default is written twice)."""
    for f in fields(cls):
        if f.name == name:
            return f.default_factory() if f.default_factory is not MISSING else f.default
    raise KeyError(f"expected a field of {cls.__name__}, got {name!r}")


def env_name(cls: type[DataclassInstance], name: str) -> str:
    """The variable a field is read from, e.g. `MEDROBUST_AUDIT_SCHEDULE`."""
    for f in fields(cls):
        if f.name == name and f.metadata.get("env"):
            return ENV_PREFIX + str(f.metadata["env"])
    raise KeyError(f"expected a field of {cls.__name__} read from the environment, got {name!r}")


Config = TypeVar("Config", bound="DataclassInstance")  # read_config returns an instance of the class it is given


def read_config(
    cls: type[Config], flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """A `cls` from flags (None = not given) over `MEDROBUST_*` variables over the fields' defaults.

    Flags are keyed by argparse destination; keys that are no field of `cls` are ignored, so a
    command may pass `vars(args)`. Raises ConfigError naming the flag or variable at fault.
    """
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    skip_env = {x for f in fields(cls) if (f.metadata.get("dest") or f.name) in given for x in f.metadata.get("excludes", ())}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields(cls):
        meta = f.metadata
        if meta.get("nested"):
            values[f.name] = read_config(meta["nested"], flags, environ)
            continue
        key = meta.get("dest") or f.name
        if key in given:
            values[f.name] = given[key]
            sources[f.name] = "--" + key.replace("_", "-")
        elif meta.get("env") and f.name not in skip_env:
            variable = ENV_PREFIX + meta["env"]
            raw = environ.get(variable, "")
            if raw != "":
                try:
                    values[f.name] = meta["parse"](raw)
                except (ValueError, ArithmeticError) as exc:
                    raise ConfigError(f"{variable}: {_expected(meta['parse'], raw, exc)}") from None
                sources[f.name] = variable
    try:
        return cls(**values)
    except FieldError as exc:
        raise ConfigError(f"{sources.get(exc.name, exc.name)}: {exc.message}") from None


def _expected(parse: Callable[[str], Any], raw: str, exc: Exception) -> str:
    if parse is int:
        return f"expected an integer, got {raw!r}"
    if parse is float:
        return f"expected a number, got {raw!r}"
    return str(exc)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parse_bool(text: str) -> bool:
    """1, true, yes or 0, false, no (any case) as a bool; anything else is a ValueError."""
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"expected one of 1, true, yes, 0, false, no, got {text!r}")


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only: localhost, 127.0.0.0/8 or ::1."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name or a malformed address: assume it is reachable from outside


# A DNS name or an IPv4 address: what may stand before ":PORT" unbracketed.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
DNS_SCHEME = "dns:///"


def check_tf_serving_target(text: str) -> None:
    """Raise ValueError unless `text` is TF Serving's gRPC address, HOST:PORT or dns:///HOST:PORT.

    The client resolves the name to every address DNS returns and balances calls over them, so
    `dns:///` + a headless Service's name reaches every TF Serving replica. The port is required:
    gRPC would otherwise dial 443, where TF Serving never listens.
    """
    address = text[len(DNS_SCHEME):] if text.startswith(DNS_SCHEME) else text
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
            host_ok = True
        except ValueError:
            host_ok = False
    else:
        host_ok = _HOST.fullmatch(host) is not None
    port_ok = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    if not (colon and host_ok and port_ok):
        raise ValueError(
            f"expected TF Serving's gRPC address as HOST:PORT or {DNS_SCHEME}HOST:PORT with a port in 1..65535 "
            f"(e.g. {DNS_SCHEME}tf-serving:8500 for a headless Service), got {text!r}"
        )


def _check_tf_serving(value: str | None) -> None:
    if value:  # None or "": no TF Serving (the embedded backend)
        try:
            check_tf_serving_target(value)
        except ValueError as exc:
            raise FieldError("tf_serving", str(exc)) from None


def _positive(name: str, value: float, low: float = 1) -> None:
    if value < low:
        raise FieldError(name, f"expected at least {low}, got {value}")


# -- the front end -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceConfig:
    """Everything `medrobust serve` and `create_app` need; tests construct it directly."""

    # None after construction only with TF Serving and --models (no repository visible to the front end).
    model_repo: Path | None = setting(None, "MODEL_REPO", parse=Path)
    # TF Serving's gRPC port, HOST:PORT or dns:///HOST:PORT (a headless Service: calls are balanced over
    # every replica); None: the embedded backend.
    tf_serving: str | None = setting(None, "TF_SERVING")
    host: str = setting("127.0.0.1", "HOST")
    port: int = setting(8000, "PORT")
    # /metrics counts diagnoses per model: served apart from the API, on a port deployments do not
    # publish (Prometheus scrapes it on the internal network). Host None: the API's host.
    metrics_host: str | None = setting(None, "METRICS_HOST")
    metrics_port: int = setting(9102, "METRICS_PORT")
    workers: int = setting(1, "WORKERS")
    threads: int = setting(4, "THREADS")
    max_upload_bytes: int = setting(20_000_000, "MAX_UPLOAD_BYTES")
    max_pixels: int = setting(MAX_PIXELS, "MAX_PIXELS")
    # Uploads decoded at once per process: each holds its full-size pixels (up to ~400 MB for
    # max_pixels of RGBA), so this bounds a burst's memory; more wait, then get 503.
    max_decodes: int = setting(2, "MAX_DECODES")
    api_token: str | None = setting(None, "API_TOKEN")  # no flag: a flag would show in the process list
    admin_token: str | None = setting(None, "ADMIN_TOKEN")
    # Without an API token anyone who reaches the port may predict and read the audits: beyond
    # loopback, only when asked for on purpose.
    allow_anonymous: bool = setting(False, "ALLOW_ANONYMOUS", parse=parse_bool)
    grpc_deadline_seconds: float = setting(GRPC_DEADLINE_SECONDS, "GRPC_DEADLINE_SECONDS")
    tf_serving_max_batch: int = setting(TF_SERVING_MAX_BATCH, "TF_SERVING_MAX_BATCH")  # larger batches are split
    poll_seconds: float = setting(30.0, "POLL_SECONDS")
    max_loaded: int = setting(8, "MAX_LOADED")
    models: tuple[str, ...] = setting((), "MODELS", parse=_names)  # TF Serving without a mounted repository
    # The audit store to show on the Audits page (runs come from a separate `medrobust audit worker`);
    # None: no Audits page. Reports drawn for the page go under audit_artefacts.
    database_url: str | None = setting(None, "DATABASE_URL")
    # How long to wait at start for a database server that is not up yet (it may start after us).
    database_wait_seconds: float = setting(DATABASE_WAIT_SECONDS, "DATABASE_WAIT_SECONDS")
    audit_artefacts: Path | None = setting(None, "AUDIT_ARTEFACTS", parse=Path)
    # The workers' audit sets, read the same way, so the Audits page and /metrics can name the served
    # models no worker can audit (their task has no audit set).
    audit_sets: Path | None = setting(None, "AUDIT_SETS", parse=Path)
    audit_dataset: str | None = setting(None, "AUDIT_DATASET")

    def __post_init__(self) -> None:
        for name in ("model_repo", "audit_artefacts", "audit_sets"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.model_repo is None and not self.tf_serving:
            object.__setattr__(self, "model_repo", DEFAULT_MODEL_REPO)
        if isinstance(self.models, str):
            object.__setattr__(self, "models", _names(self.models))
        object.__setattr__(self, "models", tuple(self.models))
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise FieldError(name, f"expected a port in 0..65535, got {getattr(self, name)}")
        if self.metrics_port and self.metrics_port == self.port:
            raise FieldError("metrics_port", f"expected a port other than the API's ({self.port}), got {self.metrics_port}")
        for name in ("workers", "threads", "max_upload_bytes", "max_pixels", "max_decodes", "max_loaded", "tf_serving_max_batch"):
            _positive(name, getattr(self, name))
        _positive("database_wait_seconds", self.database_wait_seconds, low=0)
        for name in ("grpc_deadline_seconds", "poll_seconds"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"expected a number of seconds > 0, got {getattr(self, name)}")
        _check_tf_serving(self.tf_serving)
        if self.model_repo is None and not (self.tf_serving and self.models):
            raise FieldError(
                "model_repo",
                "expected a model repository (MEDROBUST_MODEL_REPO / --model-repo) beside TF Serving, or "
                "--models naming the served models; got neither",
            )
        if self.open_beyond_loopback and not self.allow_anonymous:
            raise FieldError(
                "host",
                f"expected a loopback address (127.0.0.1, ::1, localhost) while no API token is set, got {self.host!r}: "
                "set MEDROBUST_API_TOKEN, or serve an open API on purpose with --allow-anonymous "
                "(MEDROBUST_ALLOW_ANONYMOUS=1)",
            )

    @property
    def open_beyond_loopback(self) -> bool:
        """Whether callers beyond this machine may use the API without a token (refused unless allow_anonymous)."""
        return self.api_token is None and not is_loopback(self.host)


# -- the audit -----------------------------------------------------------------------------------
def epsilon_label(value: str | float | Decimal) -> str:
    """The canonical decimal string of an epsilon: "0", "0.00125", "0.32" (the metrics' label value)."""
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        raise ValueError(f"expected an epsilon as a decimal number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"expected a finite epsilon >= 0, got {value!r}")
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def parse_epsilons(values: Sequence[str | float] | str) -> tuple[str, ...]:
    """Epsilons as sorted, unique canonical labels; accepts "0,0.01" or a sequence."""
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    labels = sorted({epsilon_label(v) for v in values}, key=Decimal)
    if not labels:
        raise ValueError("expected at least one epsilon, got none")
    return tuple(labels)


def parse_attacks(values: Sequence[str] | str) -> tuple[str, ...]:
    """Attack names, unique, in the order given; accepts "linf_pgd,ensemble" or a sequence."""
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    names = tuple(dict.fromkeys(values))
    unknown = [n for n in names if n not in attack_names()]
    if unknown or not names:
        raise ValueError(f"expected attacks among {attack_names()}, got {', '.join(map(repr, unknown)) or 'none'}")
    return names


def check_schedule(expression: str) -> None:
    """Raise ValueError unless `expression` is a 5-field cron expression (as the worker will read it)."""
    from apscheduler.triggers.cron import CronTrigger

    CronTrigger.from_crontab(expression)


@dataclass(frozen=True)
class AttackConfig:
    """How each image is attacked; defaults are the paper's protocol."""

    # Set from AuditConfig.attacks (the `--attack` flag), never read on its own.
    attack: str = setting(DEFAULT_ATTACK, dest="attack_name")
    epsilons: tuple[str, ...] = setting(PAPER_EPSILONS, "AUDIT_EPSILONS", parse=parse_epsilons)
    steps: int | None = setting(None, "AUDIT_STEPS", parse=int)  # None: the attack's own (its spec's steps)
    # PGD: steps x step size = step_ratio x epsilon
    step_ratio: float = default_budget("step_ratio")
    random_start: bool = bool(default_budget("random_start"))
    restarts: int = setting(1, "AUDIT_RESTARTS")
    batch_size: int = setting(64, "AUDIT_BATCH_SIZE")
    noise_check: bool = True  # the uniform-noise reference of the sanity checks
    # Square Attack's budget per image (alone and in the ensemble)
    queries: int = setting(default_budget("queries"), "AUDIT_QUERIES")
    seed: int = setting(0, "AUDIT_SEED")  # random starts and Square's draws; stored with the run

    def __post_init__(self) -> None:
        try:
            attack_spec(self.attack)
        except ValueError as exc:
            raise FieldError("attack", str(exc)) from None
        for name in ("queries", "restarts", "batch_size") + (("steps",) if self.steps is not None else ()):
            _positive(name, getattr(self, name))
        if self.step_ratio <= 0:
            raise FieldError("step_ratio", f"expected step_ratio > 0, got {self.step_ratio}")
        try:
            object.__setattr__(self, "epsilons", parse_epsilons(self.epsilons))
        except ValueError as exc:
            raise FieldError("epsilons", str(exc)) from None

    @property
    def epsilon_values(self) -> tuple[float, ...]:
        return tuple(float(e) for e in self.epsilons)

    @property
    def iterations(self) -> int:
        """Steps per image and epsilon: --steps, else the attack's default (1 for single-shot attacks)."""
        return self.steps if self.steps is not None else attack_spec(self.attack).steps

    def budget(self, name: str | None = None) -> dict[str, Any]:
        """The budget an attack (this config's unless named) runs with: its spec's fields, valued from here.

        Steps are this config's attack's (`iterations`): the ensemble's reach its APGD stages.
        """
        spec = attack_spec(self.attack if name is None else name)
        return {f: self.iterations if f == "steps" else getattr(self, f) for f in spec.defaults}

    def for_attack(self, name: str) -> AttackConfig:
        """The same protocol with another attack (whose default steps apply unless --steps was given)."""
        return replace(self, attack=name)


@dataclass(frozen=True)
class AuditConfig:
    """Everything one audit process needs: where the models and data are, the protocol, the store."""

    # The audit set of every task the audit-sets file does not name (and whose models' training data
    # cannot be read here); None: only those.
    dataset: str | None = setting(None, "AUDIT_DATASET")
    # A TOML file naming each task's audit set (`[tasks]` derm = "ham10000:/data/ham10000"); see audit.audit_sets.
    audit_sets: Path | None = setting(None, "AUDIT_SETS", parse=Path)
    # With TF Serving, a mounted repository (if any) still supplies the model cards; with neither
    # given, the embedded backend reads DEFAULT_MODEL_REPO.
    model_repo: Path | None = setting(None, "MODEL_REPO", parse=Path, excludes=("tf_serving",))
    tf_serving: str | None = setting(None, "TF_SERVING")
    models: tuple[str, ...] = setting((), "AUDIT_MODELS", parse=_names)  # the models to audit; (): every served one
    # The models TF Serving serves, when no mounted repository's models.config says (as the front end's).
    served_models: tuple[str, ...] = setting((), "MODELS", parse=_names)
    attack: AttackConfig = setting(factory=AttackConfig, nested=AttackConfig)  # its `attack` is the first of `attacks`
    attacks: tuple[str, ...] = setting((), "AUDIT_ATTACK", parse=parse_attacks, dest="attack")  # () means (attack.attack,)
    samples: int = setting(256, "AUDIT_SAMPLES")
    seed: int = setting(0, "AUDIT_SEED")
    database_url: str = setting(DEFAULT_DATABASE_URL, "DATABASE_URL")
    database_wait_seconds: float = setting(DATABASE_WAIT_SECONDS, "DATABASE_WAIT_SECONDS")
    artefacts_dir: Path = setting(Path(DEFAULT_ARTEFACTS), "AUDIT_ARTEFACTS")
    schedule: str = setting(DEFAULT_SCHEDULE, "AUDIT_SCHEDULE")
    poll_seconds: float = setting(30.0, "AUDIT_POLL_SECONDS")
    # Loopback unless a deployment opens it (compose and Kubernetes do, for Prometheus on their networks):
    # /metrics names every model and its robustness, and /healthz is for the orchestrator, not the world.
    metrics_host: str = setting("127.0.0.1", "AUDIT_METRICS_HOST")
    # A worker's own /metrics port, apart from the front end's (ServiceConfig.metrics_port, which
    # `serve` and `up` share): a worker beside `serve` on one machine must not collide with it.
    metrics_port: int = setting(9101, "AUDIT_METRICS_PORT")
    grpc_deadline_seconds: float = setting(GRPC_DEADLINE_SECONDS, "GRPC_DEADLINE_SECONDS")
    tf_serving_max_batch: int = setting(TF_SERVING_MAX_BATCH, "TF_SERVING_MAX_BATCH")  # larger batches are split
    # The job queue: jobs one worker carries out at once, its ceiling on calls to the model server
    # (0: none), how long a claimed job stays its own without a heartbeat, and tries before `failed`.
    concurrency: int = setting(1, "AUDIT_CONCURRENCY")
    max_rps: float = setting(0.0, "AUDIT_MAX_RPS")
    lease_seconds: float = setting(60.0, "AUDIT_LEASE_SECONDS")
    max_attempts: int = setting(3, "AUDIT_MAX_ATTEMPTS")
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("model_repo", "artefacts_dir", "audit_sets"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        _check_tf_serving(self.tf_serving)
        if self.model_repo is None and not self.tf_serving:
            object.__setattr__(self, "model_repo", DEFAULT_MODEL_REPO)
        for name in ("models", "served_models"):
            value = getattr(self, name)
            object.__setattr__(self, name, _names(value) if isinstance(value, str) else tuple(value))
        _positive("samples", self.samples)
        _positive("tf_serving_max_batch", self.tf_serving_max_batch)
        _positive("database_wait_seconds", self.database_wait_seconds, low=0)
        _positive("concurrency", self.concurrency)
        _positive("max_attempts", self.max_attempts)
        _positive("max_rps", self.max_rps, low=0)
        if self.lease_seconds < 1:
            raise FieldError("lease_seconds", f"expected a lease of at least 1 second, got {self.lease_seconds}")
        if not 0 <= self.metrics_port < 65536:
            raise FieldError("metrics_port", f"expected a port in 0..65535, got {self.metrics_port}")
        for name in ("poll_seconds", "grpc_deadline_seconds"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"expected a number of seconds > 0, got {getattr(self, name)}")
        try:
            attacks = parse_attacks(self.attacks or (self.attack.attack,))
        except ValueError as exc:
            raise FieldError("attacks", str(exc)) from None
        object.__setattr__(self, "attacks", attacks)
        if self.attack.attack != attacks[0]:
            object.__setattr__(self, "attack", self.attack.for_attack(attacks[0]))
        try:
            check_schedule(self.schedule)
        except ValueError as exc:
            raise FieldError("schedule", f"expected a 5-field cron expression, got {self.schedule!r}: {exc}") from None

    def attack_config(self, name: str | None = None) -> AttackConfig:
        """The protocol of one of `attacks` (the first when not named)."""
        name = self.attacks[0] if name is None else name
        if name not in self.attacks:
            raise ValueError(f"expected an attack among the configured {self.attacks}, got {name!r}")
        return self.attack.for_attack(name)

    def with_(self, **changes: Any) -> AuditConfig:
        return replace(self, **changes)


# -- training and data ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """`medrobust train` and `export-config`: where versions are published."""

    model_repo: Path = setting(DEFAULT_MODEL_REPO, "MODEL_REPO")
    serving_root: str | None = setting(None, "SERVING_ROOT")  # the repository's path inside TF Serving's container
    workdir: Path = setting(Path(".medrobust"), "WORKDIR")  # checkpoints of runs in progress

    def __post_init__(self) -> None:
        for name in ("model_repo", "workdir"):
            object.__setattr__(self, name, Path(getattr(self, name)))


@dataclass(frozen=True)
class ReproduceConfig:
    """`medrobust reproduce`: where its resumable state goes."""

    out: Path = setting(Path("reproduce"), "REPRODUCE_OUT")


@dataclass(frozen=True)
class DataConfig:
    """Where downloaded datasets are cached (read where a download happens)."""

    cache_dir: Path = setting(Path.home() / ".cache" / "medrobust" / "medmnist", "CACHE_DIR", parse=lambda s: Path(s).expanduser())
