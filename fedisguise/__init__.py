"""fedisguise: federated learning on Flower with client-side image disguises and real attacks."""

__version__ = "0.1.0"
