"""fedisguise: federated learning on Flower with client-side image disguises and real attacks."""

# The config checks names against the registries through fedisguise.validation, which sits
# above them and hands its check to Config.validate when imported: imported here, so that any
# use of the package has it. Light: the registries (torch and all) load when a config is
# validated, not here.
from fedisguise import validation as _validation  # noqa: F401

__version__ = "0.1.0"
