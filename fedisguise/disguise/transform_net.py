"""The transformation network as a defence (Ito, Kinoshita, Kiya): h_θ applied to a client's
images. h_θ itself (the network, its training, its file) is in transform_net_training; the
experiment harness that trains one before a run is fedisguise.disguise.transform_net_prepare.
"""

from __future__ import annotations

from typing import Any


from fedisguise.disguise.base import Disguise, register
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.disguise.transform_net_training import (
    HARNESS_DEFAULTS,
    TRAINERS,
    TRAINING_DEFAULTS,
    check_training,
    load_transform_net,
    transform_images,
)


@register
class TransformNet(Disguise):
    """h_θ applied batch-wise, without gradients, on the images' device. Keyless (a key is
    accepted and ignored, as for every keyless defence).

    `path` names a trained h_θ (a file from `save_transform_net`); with `path` empty the experiment
    harness trains one before the run (fedisguise.disguise.transform_net_prepare.prepare) from the
    training parameters (TRAINING_DEFAULTS) and the harness parameters: `classifier` (ψ's model
    name; empty = the run's model) or `classifier_path` (a trained ψ's state dict),
    `classifier_epochs`, `trainer` (`coordinator`: training images no client holds; `client`:
    client `trainer_client`'s own partition) and `train_samples`. Training parameters given beside
    a path must match the file's, so a spec never claims an α its network was not trained with.
    """

    name = "transform-net"
    keyed = False
    per_image = True

    def __init__(self, key: DisguiseKey | None = None, path: str = "",
                 alpha: float | None = None, features: str | None = None,
                 features_fallback: str | None = None, epochs: int | None = None,
                 batch_size: int | None = None, lr: float | None = None,
                 optimizer: str | None = None, width: int | None = None,
                 validation: float | None = None, seed: int | None = None,
                 classifier: str = "", classifier_path: str = "", classifier_epochs: int = 3,
                 trainer: str = "coordinator", trainer_client: int = 0,
                 train_samples: int = 10000) -> None:
        spec = {k: v for k, v in locals().items() if k not in ("self", "key", "__class__")}
        given = self.check_spec(spec)
        if not path:
            raise ValueError("transform-net needs a trained h_θ: set `path` to a file made by "
                             "save_transform_net, or run it through run.py, which trains one "
                             "before the run (fedisguise.disguise.transform_net_prepare.prepare)")
        self.net, self.info = load_transform_net(path)
        trained = self.info.get("training", {})
        differ = {k: (v, trained.get(k)) for k, v in given.items() if trained.get(k) != v}
        if differ:
            raise ValueError(f"{path} was trained with other parameters than the spec says "
                             f"(spec, file): {differ}")
        self.path = path

    @staticmethod
    def check_spec(params: dict[str, Any]) -> dict[str, Any]:
        """Check a spec's values without loading or training anything (config time);
        returns the training parameters it sets."""
        given = {k: v for k, v in params.items() if k in TRAINING_DEFAULTS and v is not None}
        check_training({**TRAINING_DEFAULTS, **given})
        h = {**HARNESS_DEFAULTS, **{k: v for k, v in params.items() if k in HARNESS_DEFAULTS}}
        if h["trainer"] not in TRAINERS:
            raise ValueError(f"unknown trainer {h['trainer']!r}; valid choices: "
                             f"{list(TRAINERS)}")
        if h["trainer_client"] < 0 or h["train_samples"] < 10 or h["classifier_epochs"] < 0:
            raise ValueError("trainer_client must be >= 0, train_samples >= 10 and "
                             "classifier_epochs >= 0")
        if h["classifier"]:
            from fedisguise.models import MODELS

            if h["classifier"] not in MODELS:
                raise ValueError(f"unknown classifier {h['classifier']!r}; valid choices: "
                                 f"{sorted(MODELS)}")
        return given

    @classmethod
    def buildable(cls, params: dict[str, Any]) -> bool:
        return bool(params.get("path"))

    @classmethod
    def prepare(cls, cfg: Any) -> Any:
        from fedisguise.disguise import transform_net_prepare as transform

        return transform.prepare(cfg)

    @classmethod
    def run_record(cls, cfg: Any) -> dict[str, Any]:
        from fedisguise.disguise import transform_net_prepare as transform

        return {"transform_net": transform.figures(cfg)}

    def _check_shape(self, chw: tuple[int, int, int]) -> None:
        channels = self.net.out.out_channels
        if chw[0] != channels:
            raise ValueError(f"this transformation network takes {channels}-channel images, "
                             f"got {chw[0]}")

    def _apply(self, images, labels):
        return transform_images(self.net, images), labels


