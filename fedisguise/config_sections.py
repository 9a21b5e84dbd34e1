"""The sections of an experiment config ([experiment], [data], ... [deployment]): each key
with its type, its default and what it means. fedisguise.config builds a Config of them;
fedisguise.validation checks their values."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedisguise.dp_modes import NO_DP


@dataclass
class ExperimentConfig:
    name: str = "default"  # results go to <out>/<name>/
    seed: int = 0  # fixes partitions, model init, sampling and training order
    rounds: int = 3
    clients: int = 2  # = SuperNodes; 2 matches Flower's default local simulation federation
    out: str = "results"
    mode: str = "simulation"
    # modules or .py files that register defences, attacks, datasets or models
    # (fedisguise.plugins); installed packages' `fedisguise.plugins` entry points load anyway
    plugins: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str = ""  # searched first; empty = the default places (see fedisguise.data.datasets)
    partitioner: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration, used by the `dirichlet` partitioner
    train_per_client: int = 0  # 0 = the whole partition; >0 caps it (fast runs)
    test_samples: int = 0  # 0 = the whole test split for the server's evaluation
    # > 0: this fraction of each client's own training images is held out (not trained on)
    # and the global model is scored on it every round: a split for tuning, never the test set
    validation: float = 0.0
    # > 0: this run's one client holds the union of what this many clients would hold (same
    # partitioner, alpha, seed, train_per_client): centralised training on a federation's
    # images, for the same epochs, as the papers train (experiment.clients must be 1)
    union_of: int = 0
    # Decoding, for any dataset: [H, W] resizes every image (non-square allowed; empty = as
    # stored), `channels` 1 or 3 converts (0 = as stored). `test_fraction` > 0: an image
    # folder of class folders alone gets a stratified test split of this fraction
    # (fedisguise.data.folder), the same in every process and run.
    image_size: list[int] = field(default_factory=list)
    channels: int = 0
    test_fraction: float = 0.0

    @property
    def source(self) -> str:
        """The name every loader call, cache and shared decoded copy is keyed by: the
        dataset, and its decoding options where any is set (fedisguise.data.datasets)."""
        return source_name(self.dataset, self.image_size, self.channels, self.test_fraction)


def source_name(dataset: str, image_size: list[int] | tuple[int, ...] = (), channels: int = 0,
                test_fraction: float = 0.0) -> str:
    """`dataset`, or `dataset?size=HxW&channels=C&test_fraction=F` with the options set."""
    options = []
    if image_size:
        options.append("size=" + "x".join(str(int(v)) for v in image_size))
    if channels:
        options.append(f"channels={int(channels)}")
    if test_fraction:
        options.append(f"test_fraction={float(test_fraction)!r}")
    return dataset + ("?" + "&".join(options) if options else "")


def parse_source(source: str) -> tuple[str, dict]:
    """Inverse of `source_name`: the dataset and its options (image_size as (H, W))."""
    dataset, _, query = source.partition("?")
    options: dict = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key == "size":
            options["image_size"] = tuple(int(v) for v in value.split("x"))
        elif key == "channels":
            options["channels"] = int(value)
        elif key == "test_fraction":
            options["test_fraction"] = float(value)
        else:
            raise ValueError(f"unknown option {key!r} in data source {source!r}")
    return dataset, options


@dataclass
class ModelConfig:
    name: str = "lenet"


@dataclass
class TrainConfig:
    optimizer: str = "sgd"
    local_epochs: int = 1
    local_steps: int = 0  # > 0: stop after this many batches (1 = FedSGD); 0 = whole epochs
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class StrategyConfig:
    name: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    proximal_mu: float = 0.0  # FedProx only
    # Robust aggregation (Flower's own strategies): the Byzantine clients that Krum,
    # MultiKrum and Bulyan are told to withstand; the fraction FedTrimmedAvg cuts from each
    # end of every coordinate; how many updates MultiKrum averages (0 = the sampled clients
    # less num_malicious)
    num_malicious: int = 0
    trim_beta: float = 0.2
    num_selected: int = 0
    # Nodes that die mid-run are recorded and the run goes on with the rest, down to
    # min_clients; below it the server waits node_timeout seconds, then ends the run (exit 1).
    min_clients: int = 1
    node_timeout: float = 120.0
    # The most examples one train reply may claim where data.train_per_client does not bound
    # a node's partition; a reply above it is refused, so no client outweighs the rest at will.
    max_examples: int = 1_000_000


@dataclass
class ResourcesConfig:
    num_cpus: float = 1.0  # per simulated client
    num_gpus: float = 0.0  # per simulated client; fractions share one GPU
    device: str = "auto"  # auto = CUDA when present
    # simulation on a running Ray cluster: "auto", or the head's HOST:PORT (Ray's own
    # RAY_ADDRESS does the same); empty = a Ray started here for the run
    ray_address: str = ""


@dataclass
class ClientConfig:
    """Client-side protection settings; keys never leave the client process."""

    key_scope: str = "per-client"  # per-client: a key per client; federation: one shared key
    key_file: str = ""  # master key file (0600); empty = derived from experiment.seed
    # a folder of per-node key files: node i uses <key_dir>/client-<i>.key (make one with
    # `python -m fedisguise.disguise.keygen --out DIR --clients N`); excludes key_file
    key_dir: str = ""
    # once | round | batch: when the disguise's random draws (noise, mixing, masks, shuffles)
    # are made afresh; the keyed transform never changes (fedisguise.node_data)
    redisguise: str = "once"
    redisguise_each_round: bool = False  # deprecated: redisguise = "round"


@dataclass
class PrivacyConfig:
    """The harness's privacy figures after a disguised run (DisguisedNets §4)."""

    examiner_epochs: int = 2  # DNN examiner trained on plain images
    examiner_samples: int = 10000  # plain training images for it (0 = all)
    grid_images: int = 8  # columns of the plain | disguised PNG grid


@dataclass
class DPConfig:
    """Differential-privacy baseline (fedisguise.privacy.dp)."""

    # a registered mode (fedisguise.dp_modes): none | dp-sgd (Opacus, on every client) |
    # central-server | central-client (Flower's DP strategy wrappers: update clipping on the
    # server or on the clients, server noise)
    mode: str = NO_DP.name
    noise_multiplier: float = 1.0  # used when target_epsilon = 0 (dp-sgd) / always (central)
    max_grad_norm: float = 1.0  # dp-sgd: per-sample clipping bound
    target_epsilon: float = 0.0  # dp-sgd, > 0: the noise that spends this over the whole run
    delta: float = 1e-5
    clipping: str = "fixed"  # central: fixed | adaptive (Andrew et al. 2021)
    clipping_norm: float = 1.0  # central: the norm, or the initial norm when adaptive
    target_clipped_quantile: float = 0.5  # central adaptive
    clip_norm_lr: float = 0.2  # central adaptive
    clipped_count_stddev: float = 0.0  # central adaptive; 0 = Flower's default (sampled / 20)


@dataclass
class DeploymentConfig:
    """How Flower's processes talk in deployment mode (fedisguise.deployment: federation.py,
    tls.py).

    Paths are checked where they are used (`fedisguise.deployment.submission.check_security`), not
    here: this config also reaches the ServerApp, possibly on a machine without these files.
    """

    tls: bool = False  # HTTPS between SuperLink, SuperNodes and `flwr`
    # The local federation's SuperLink certificates: a folder with ca.crt, server.pem and
    # server.key (`python -m fedisguise.deployment.tls certs DIR`); empty = fresh ones for
    # loopback.
    certificates: str = ""
    # --superlink HOST:PORT: the CA certificate its certificate chains to; empty = the
    # system's CA store.
    root_certificates: str = ""
    # Local federation: a key pair per SuperNode, registered with the SuperLink before the
    # SuperNode starts; the SuperLink refuses any other. A remote SuperLink's operator
    # registers its own SuperNodes. Needs tls.
    supernode_auth: bool = False
    # The local federation's SuperNodes run through fedisguise.deployment.supernode.launcher
    # (Flower's SuperNode, polling every 0.2 s instead of 3 s, each message's ClientApp forked
    # from a warm process); false: the stock `flower-supernode`.
    fast_nodes: bool = True
