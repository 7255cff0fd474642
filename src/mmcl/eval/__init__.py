"""Evaluation: scorers that compare a prediction with reference answers."""
