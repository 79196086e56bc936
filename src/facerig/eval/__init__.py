"""Evaluation: identity preservation, edit accuracy, reconstruction quality and distribution distance.

Metric modules are pure functions (``image_metrics``, ``edit_accuracy``, ``frechet``, ``identity``);
``evaluate`` runs them over a folder of edit results and ``report`` writes what a reader looks at.
"""
