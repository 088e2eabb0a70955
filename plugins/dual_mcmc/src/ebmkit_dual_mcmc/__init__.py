r"""Dual-MCMC teaching for ebmkit: a generator initializer with an inference model and a
posterior Langevin revision, trained with the EBM (Cui & Han, NeurIPS 2023)."""
