"""python -m minivllm.bench: the same as the minivllm-bench console script."""
import sys

from . import main

sys.exit(main())
