"""Capture: photo -> aligned crop -> fitted 3D face."""
