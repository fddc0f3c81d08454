import os
import sys

# dist_util lives beside the tests; spawned ranks import test modules by name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "1")
