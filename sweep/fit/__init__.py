"""The fitter: Kaplan and Chinchilla (approaches 1-3) laws with bootstrap CIs from a table of runs.

numpy, scipy, pandas and matplotlib only: nothing here imports torch.
"""
