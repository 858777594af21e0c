"""The fitter: Kaplan's laws (L(N), L(D), L(C), L(N, D)) and Chinchilla's approaches 1-3 with
bootstrap CIs, from a table of runs.

numpy, scipy, pandas and matplotlib only: nothing here imports torch.
"""
