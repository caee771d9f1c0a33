"""Benchmarks behind ``groupdiff bench``: each prints a table and writes JSON."""
