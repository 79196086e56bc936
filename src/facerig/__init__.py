"""facerig: 3D-rigged portrait editing (DiffusionRig, StyleRig) on a shared 3D face layer."""

__version__ = "0.1.0"
