"""Client-side disguises: one module per defence family, one registry (see base.py)."""

from fedisguise.disguise.base import DISGUISES, Disguise, NoDisguise, build, check_images

__all__ = ["DISGUISES", "Disguise", "NoDisguise", "build", "check_images"]
