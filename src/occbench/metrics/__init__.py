"""Evaluation metrics and the statistics used to summarise them over seeds."""
