"""Glue between params.yaml and the DAG: run coordinates and their file paths.

Snakemake rules, DVC stages and the CLI all take paths from here, so the
layout of results/ is defined once. Nothing here imports torch: the Snakefile
imports it at parse time and must plan thousands of jobs in seconds.
"""
