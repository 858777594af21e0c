"""Sweeps: train one run, record it, and (in later modules) launch grids, collect and fit.

`sweep` may import `models` and `data`; neither of them imports `sweep`.
"""
