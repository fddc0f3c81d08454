"""What the rank server of dist_util imports once, before it forks the
ranks of every test: torch and the frameworks the integration tests train
with, when installed (the wheel's venv has neither Lightning nor
torchtitan). Importing starts no thread and no process group."""
import numpy  # noqa: F401
import pytest  # noqa: F401
import torch  # noqa: F401
import torch.distributed  # noqa: F401
import torch.distributed.checkpoint  # noqa: F401
import torch.distributed.tensor  # noqa: F401

try:
    import pytorch_lightning  # noqa: F401
except ImportError:
    pass

try:
    import torchtitan  # noqa: F401
except ImportError:
    pass
else:
    import torchtitan_job

    torchtitan_job.cpu_patches()  # imports torchtitan's model code (3 s)
