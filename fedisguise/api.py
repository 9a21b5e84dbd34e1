"""The public plugin API: what a defence, attack, dataset or model needs to join the
benchmark without editing the package. Everything here keeps its name within a major version.

- A defence: a subclass of `Disguise` that sets `name` (and `keyed`, `draws`, `per_image`
  where they differ from the defaults) and implements `_apply(images, labels)`, decorated
  with `@register_disguise`. A keyed defence is built with the node's `DisguiseKey`: draw its
  transform from `key.generator("purpose")`.
- An attack: a subclass of `Attack` that sets `name`, `evidence` and `figures`, implements
  `reconstruct(evidence, knowledge, runtime)` and `score(reconstruction, truth, scorer)`,
  decorated with `@register_attack`. `score_outsourced` scores image reconstructions. A
  Level-1 attacker's `knowledge.algorithm` is a `DisguiseSpec` (`.name`, `.params`, the
  defence's class as `.defence`, `.build(key)` under the attacker's own key).
- A dataset: `@register_dataset("name")` on `loader(split, data_dir) -> ImageDataset`.
- A model: `@register_model("name")` on `builder(in_channels, num_classes, image_size)`,
  `image_size` being (H, W).
- A DP mode: `register_dp_mode(DPMode(name, description, per_example=..., clips_on=...))`,
  a new name for a combination of the mechanisms the pipeline has (DP-SGD on the clients,
  or Flower's central-DP wrapper clipping on the server or the clients).

Load the module through an installed package's `fedisguise.plugins` entry point, or list it
in `experiment.plugins` / `run.py --plugin` (fedisguise.plugins).
"""

from fedisguise.attacks.base import (
    Attack,
    Evidence,
    Figure,
    GroundTruth,
    Knowledge,
    Reconstruction,
    Runtime,
    ServerView,
)
from fedisguise.attacks.base import register as register_attack
from fedisguise.attacks.scoring import Scorer, score_outsourced
from fedisguise.data.datasets import DatasetLoader, ImageDataset, register_dataset
from fedisguise.disguise.base import Disguise
from fedisguise.disguise.base import register as register_disguise
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.disguise.spec import DisguiseSpec
from fedisguise.dp_modes import DPMode, register_dp_mode
from fedisguise.models import ModelBuilder, register_model

__all__ = [
    "Attack",
    "DatasetLoader",
    "Disguise",
    "DisguiseKey",
    "DisguiseSpec",
    "DPMode",
    "Evidence",
    "Figure",
    "GroundTruth",
    "ImageDataset",
    "Knowledge",
    "ModelBuilder",
    "Reconstruction",
    "Runtime",
    "Scorer",
    "ServerView",
    "register_attack",
    "register_dataset",
    "register_disguise",
    "register_dp_mode",
    "register_model",
    "score_outsourced",
]
