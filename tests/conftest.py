import os
import sys

# The repository root, so that tests can import `configs` as the programs do.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
