"""Aggregation of fine-tuning runs into the paper's tables, plots and DVC metrics."""
