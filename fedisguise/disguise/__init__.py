"""Client-side disguises: one module per defence family, one registry (base.DISGUISES).

Importing this package registers every defence, so `build(spec, key)` knows all names.
"""

from fedisguise.disguise import (  # noqa: F401
    aes,
    disguisednets,
    instahide,
    transform_net,
    visualmixer,
    visualmixer_authors,
)
from fedisguise.disguise.base import DISGUISES, Disguise, NoDisguise, check_images
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.disguise.spec import DisguiseSpec, build

__all__ = ["DISGUISES", "Disguise", "DisguiseKey", "DisguiseSpec", "NoDisguise", "build",
           "check_images"]
