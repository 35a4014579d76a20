"""Multi-camera BEV perception. Importing this package never imports torch."""

__version__ = "0.1.0"
