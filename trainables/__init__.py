"""The trainable side of tightrope: one loss-constrained sparse-training trial in plain PyTorch (never Ray/W&B).

``config`` the validated trial config; ``data`` corpus, held-out splits, fixed validation set, sampler;
``model`` the GPT with an attention hook; ``pretrain`` the cached base model; ``tasks`` the task protocol and
the sparse-attention / weight-sparsity tasks; ``controller`` lambda controllers; ``loop`` one trial;
``metrics`` names and the trial summary; ``checkpoint`` atomic save/load.
"""
