"""Hydra sweeper plugin for scaling sweeps: plans the whole grid, prints it, launches what is left.

Hydra finds plugins only in the `hydra_plugins` namespace package; the logic lives in sweep.grid.
"""
