"""Evaluation: datasets, the method matrix, results files, tables and plots."""
