"""prune-lit: sequential knowledge editing with PRUNE spectral restraint, on PyTorch Lightning."""

__version__ = "0.1.0"
