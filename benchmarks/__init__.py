"""Benchmarks of the service against bare baselines, measured in one run (``make bench``).

See ``benchmarks/README.md``: what is measured, how, and the optimisations with their figures.
"""
