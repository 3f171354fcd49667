"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) as hook plugins."""
