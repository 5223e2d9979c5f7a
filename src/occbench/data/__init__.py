"""Datasets: the on-disk frame format, the unified taxonomy, generators and splits."""
