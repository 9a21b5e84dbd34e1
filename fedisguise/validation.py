"""A config checked against the registries (defences, attacks, datasets, models, optimizers,
strategies, DP modes, faults; the plugins' names too, loaded first) and its values against
their ranges.

Above the config and the registries: the config is a leaf that imports neither, and this
module hands it `validate` when imported (`Config.validate`, `Config.from_dict`). The
package's __init__ imports it, so every process that uses fedisguise has it; it imports the
registries (torch and all) only when a config is validated.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
from typing import Any

from fedisguise.config import (
    DEVICES,
    KEY_SCOPES,
    MODES,
    NAME_MAX,
    REDISGUISE,
    SECTIONS,
    Config,
    ConfigError,
    set_validator,
)
from fedisguise.dp_modes import DP_MODES, dp_mode
from fedisguise.plugins import choices as listed


def validate(self: Config) -> None:
    """Check names against the registries (the plugins' names too: they load first) and
    values against their ranges."""
    self.load_plugins()
    from fedisguise.attacks import ATTACKS, build_attack, parse_spec
    from fedisguise.data.datasets import DATASETS
    from fedisguise.data.partitions import PARTITIONERS
    from fedisguise.disguise import DISGUISES, DisguiseSpec
    from fedisguise.faults import check_faults
    from fedisguise.models import MODELS
    from fedisguise.training import OPTIMIZERS
    from strategies import STRATEGIES, check_robust

    e, d, t, s, r = self.experiment, self.data, self.train, self.strategy, self.resources
    for section in SECTIONS:  # --set train.lr=inf parses as a float; no setting means it
        for key, value in dataclasses.asdict(getattr(self, section)).items():
            _check(not isinstance(value, float) or math.isfinite(value),
                   f"{section}.{key}", value, "a finite number")
    _choice("experiment.mode", e.mode, MODES)
    _choice("data.dataset", d.dataset, DATASETS)
    _choice("data.partitioner", d.partitioner, PARTITIONERS)
    _choice("model.name", self.model.name, MODELS)
    _choice("train.optimizer", t.optimizer, OPTIMIZERS)
    _choice("strategy.name", s.name, STRATEGIES)
    _choice("resources.device", r.device, DEVICES)
    _check(e.name != "" and "/" not in e.name and e.name not in (".", ".."),
           "experiment.name", e.name, "a non-empty name without '/'")
    # It names a folder: no control character (NUL ends a C path), at most 255 bytes
    # (NAME_MAX), so the folder can be made at all
    _check(not any(ord(ch) < 32 or ord(ch) == 127 for ch in e.name), "experiment.name",
           e.name, "a name without control characters (NUL, newline, tab, ...)")
    _check(len(os.fsencode(e.name)) <= NAME_MAX, "experiment.name",
           e.name[:40] + "...", f"a name of at most {NAME_MAX} bytes (it names a folder); "
           f"this one has {len(os.fsencode(e.name))}")
    _check(e.rounds >= 1, "experiment.rounds", e.rounds, ">= 1")
    _check(e.clients >= 1, "experiment.clients", e.clients, ">= 1")
    _check(d.alpha > 0, "data.alpha", d.alpha, "> 0")
    _check(d.train_per_client >= 0, "data.train_per_client", d.train_per_client, ">= 0")
    _check(d.test_samples >= 0, "data.test_samples", d.test_samples, ">= 0")
    _check(0 <= d.validation < 0.5, "data.validation", d.validation,
           "a fraction in [0, 0.5) of each client's training images")
    _check(d.image_size == [] or (len(d.image_size) == 2 and min(d.image_size) >= 1),
           "data.image_size", d.image_size, "[] (as stored) or [H, W], each >= 1")
    _check(d.channels in (0, 1, 3), "data.channels", d.channels, "0 (as stored), 1 or 3")
    _check(0 <= d.test_fraction < 1, "data.test_fraction", d.test_fraction, "in [0, 1)")
    loader = DATASETS[d.dataset]
    _check(d.test_fraction == 0 or getattr(loader, "decodes", False), "data.test_fraction",
           d.test_fraction, f"0: it splits an image folder (dataset 'folder'); {d.dataset} "
           f"has its own test split")
    _check(not getattr(loader, "needs_data_dir", False) or d.data_dir != "", "data.data_dir",
           d.data_dir, f"your image folder: the {d.dataset!r} dataset reads it")
    _check(d.union_of == 0 or (d.union_of >= 2 and e.clients == 1), "data.union_of",
           d.union_of, "0, or >= 2 with experiment.clients = 1 (one client holding the "
           "union of that many clients' images)")
    # The evaluation set is cut into one shard per client (fedisguise.data.partitions.client_data).
    _check(d.test_samples == 0 or d.test_samples >= e.clients, "data.test_samples",
           d.test_samples, f"0 (all) or >= experiment.clients ({e.clients}): every "
           "client evaluates on its own shard")
    _check(t.local_epochs >= 1, "train.local_epochs", t.local_epochs, ">= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1")
    _check(t.local_steps >= 0, "train.local_steps", t.local_steps, ">= 0")
    _check(t.lr > 0, "train.lr", t.lr, "> 0")
    _check(0 <= t.momentum < 1, "train.momentum", t.momentum, "in [0, 1)")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    _check(0 < s.fraction_train <= 1, "strategy.fraction_train", s.fraction_train, "in (0, 1]")
    _check(0 <= s.fraction_evaluate <= 1, "strategy.fraction_evaluate",
           s.fraction_evaluate, "in [0, 1]")
    _check(s.proximal_mu >= 0, "strategy.proximal_mu", s.proximal_mu, ">= 0")
    try:
        check_robust(s, e.clients)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check(1 <= s.min_clients <= e.clients, "strategy.min_clients", s.min_clients,
           f"in [1, experiment.clients = {e.clients}]")
    _check(s.node_timeout > 0, "strategy.node_timeout", s.node_timeout, "> 0 seconds")
    _check(s.max_examples >= 1, "strategy.max_examples", s.max_examples, ">= 1")
    _check(r.num_cpus > 0, "resources.num_cpus", r.num_cpus, "> 0")
    _check(r.num_gpus >= 0, "resources.num_gpus", r.num_gpus, ">= 0")
    _check(r.ray_address in ("", "auto", "local") or re.fullmatch(
        r"(ray://)?[\w.\-\[\]:]+:\d+", r.ray_address) is not None, "resources.ray_address",
        r.ray_address, '"", "auto" or the head\'s HOST:PORT (ray://HOST:PORT for Ray Client)')
    _choice("client.key_scope", self.client.key_scope, KEY_SCOPES)
    _choice("client.redisguise", self.client.redisguise, REDISGUISE)
    _validate_keys(self)
    p = self.privacy
    _check(p.examiner_epochs >= 1, "privacy.examiner_epochs", p.examiner_epochs, ">= 1")
    _check(p.examiner_samples >= 0, "privacy.examiner_samples", p.examiner_samples, ">= 0")
    _check(p.grid_images >= 1, "privacy.grid_images", p.grid_images, ">= 1")

    dp = self.dp
    _choice("dp.mode", dp.mode, DP_MODES)
    mode = dp_mode(dp.mode)
    _choice("dp.clipping", dp.clipping, ("fixed", "adaptive"))
    _check(dp.clipping_norm > 0, "dp.clipping_norm", dp.clipping_norm, "> 0")
    _check(0 < dp.target_clipped_quantile < 1, "dp.target_clipped_quantile",
           dp.target_clipped_quantile, "in (0, 1)")
    _check(dp.clip_norm_lr > 0, "dp.clip_norm_lr", dp.clip_norm_lr, "> 0")
    if mode.central:
        _check(dp.noise_multiplier >= 0, "dp.noise_multiplier", dp.noise_multiplier, ">= 0")
        _check(dp.clipped_count_stddev >= 0, "dp.clipped_count_stddev",
               dp.clipped_count_stddev, ">= 0")
        from flwr.serverapp.strategy import FedAvg

        from strategies import central_dp, sampled_clients

        try:  # Flower checks its wrapper's parameters when it is built: do it now
            central_dp(FedAvg(), dp, sampled_clients(s, e.clients))
        except ValueError as err:
            raise ConfigError(f"dp ({dp.mode}, {dp.clipping} clipping): {err}") from None
    _check(dp.max_grad_norm > 0, "dp.max_grad_norm", dp.max_grad_norm, "> 0")
    _check(dp.target_epsilon >= 0, "dp.target_epsilon", dp.target_epsilon, ">= 0")
    _check(dp.target_epsilon > 0 or dp.noise_multiplier > 0, "dp.noise_multiplier",
           dp.noise_multiplier, "> 0 (or set dp.target_epsilon)")
    _check(0 < dp.delta < 1, "dp.delta", dp.delta, "in (0, 1)")
    if mode.per_example:
        from fedisguise.privacy.dp import check_model

        _check(s.name != "fedprox", "strategy.name", s.name,
               f"not fedprox with dp.mode = {dp.mode!r} (its proximal term is not part "
               "of the DP-SGD step)")

        try:
            check_model(MODELS[self.model.name](3, 10, 32), self.model.name)
        except ValueError as err:
            raise ConfigError(f"dp.mode = {dp.mode!r}: {err}") from None

    dep = self.deployment
    for key, value in (("certificates", dep.certificates),
                       ("root_certificates", dep.root_certificates),
                       ("supernode_auth", dep.supernode_auth)):
        _check(dep.tls or not value, f"deployment.{key}", value,
               "unset unless deployment.tls = true")

    disguise_name = self.disguise_name
    _choice("disguise", disguise_name, DISGUISES)
    try:
        spec = DisguiseSpec.parse(self.disguise)  # the process's one parse (resolved reuses it)
        spec.defence.check_spec(dict(spec.params))  # values, before anything is built
    except ValueError as err:
        raise disguise_error(self.disguise, err) from None
    if not isinstance(self.attacks, list):
        raise ConfigError(f"attacks must be a list of tables, got {self.attacks!r}")
    for i, attack in enumerate(self.attacks):
        if not isinstance(attack, dict) or "name" not in attack:
            raise ConfigError(f"attacks[{i}] must be a table with a 'name', got {attack!r}")
        _choice(f"attacks[{i}].name", attack["name"], ATTACKS)
        try:
            spec = parse_spec(attack)
            built = build_attack(spec)  # parameter names, types and ranges
        except ValueError as err:
            raise ConfigError(f"attacks[{i}]: {err}") from None
        _check(spec.target.round <= e.rounds, f"attacks[{i}].round", spec.target.round,
               f"<= experiment.rounds ({e.rounds})")
        _check(spec.target.client < e.clients, f"attacks[{i}].client", spec.target.client,
               f"< experiment.clients ({e.clients})")
        plan = getattr(built, "plan", None)
        if plan is not None:  # a chain's default stages depend on the run's disguise
            try:
                plan(self.disguise)
            except ValueError as err:
                raise ConfigError(f"attacks[{i}]: {err}") from None

    try:
        self.faults = check_faults(self.faults, e.clients, e.rounds)
    except ValueError as err:
        raise ConfigError(str(err)) from None

def _validate_keys(self: Config) -> None:
    """Where keys come from: one source, and none for a defence that takes no key
    (a key file it would never read hides a misconfigured run)."""
    from fedisguise.disguise import DISGUISES

    c = self.client
    if c.key_file and c.key_dir:
        raise ConfigError("client.key_file and client.key_dir are both set; choose one "
                          "(key_file: one master key; key_dir: a key file per node)")
    if c.key_dir and c.key_scope != "per-client":
        raise ConfigError(f"client.key_dir gives every node its own key, so it needs "
                          f"client.key_scope = 'per-client', got {c.key_scope!r} (to "
                          f"share one key, set client.key_file instead)")
    name = self.disguise_name
    if name in DISGUISES and not DISGUISES[name].keyed:
        for key, value in (("client.key_file", c.key_file), ("client.key_dir", c.key_dir)):
            if value:
                raise ConfigError(f"disguise {name!r} takes no key; remove {key}")
    if name in DISGUISES and c.redisguise != "once":
        from fedisguise.disguise import DisguiseSpec

        if not DisguiseSpec.parse(self.disguise).redraws():
            raise ConfigError(f"client.redisguise = {c.redisguise!r} has nothing to draw "
                              f"afresh: disguise {name!r} makes no random draws with "
                              f"these parameters; use 'once'")


def disguise_error(spec: str | dict[str, Any], err: ValueError) -> ConfigError:
    """A defence's ValueError as a ConfigError naming `disguise.<param>`: the first of the
    spec's own parameters the message names, else the first of the defence's, else none."""
    from fedisguise.disguise import DISGUISES
    from fedisguise.disguise.base import spec_params

    name, given = spec_params(spec)
    accepted = [p for p in inspect.signature(DISGUISES[name].__init__).parameters
                if p not in ("self", "key")] if name in DISGUISES else []
    message = str(err)
    key = "disguise"
    for candidates in (list(given), accepted):
        found = [(m.start(), p) for p in candidates
                 if (m := re.search(rf"(?<![\w.]){re.escape(p)}(?!\w)", message))]
        if found:
            key = f"disguise.{min(found)[1]}"
            break
    return ConfigError(f"{key} ({name}): {message}")


def _choice(key: str, value: Any, choices: Any) -> None:
    if value not in choices:
        names = listed(choices) if isinstance(choices, dict) else sorted(choices)
        raise ConfigError(f"unknown {key} {value!r}; valid choices: {names}")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


set_validator(validate)
