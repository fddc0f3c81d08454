"""shardwise inside the frameworks users train with.

- :mod:`shardwise.integrations.lightning`: a ``CheckpointIO`` plugin for
  PyTorch Lightning (``Trainer(plugins=[ShardwiseCheckpointIO()])``).

Each module imports its framework only when it is used.
"""
