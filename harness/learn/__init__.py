"""Learning: the models, the training recipe, trusted evaluation, and `unlearn data describe`.

Pure model code: it knows nothing of executors, the sandbox or the store. The sandboxed worker
imports `harness.learn.models`, so this package imports nothing at its top.
"""
