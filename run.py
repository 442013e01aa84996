"""VAST entry point: `python run.py --config FILE [--key value ...]`, also under torchrun or
`python -m torch.distributed.launch`. Everything happens in `vast.cli`."""

import sys

from vast.cli import main

if __name__ == "__main__":
    sys.exit(main())
