"""`python -m vast.config --write-defaults`: regenerate config/vast/default_{run,model}_cfg.json from the schema."""

import sys

from vast.config.files import DEFAULTS_DIR
from vast.config.keys import write_defaults_files

if sys.argv[1:] != ["--write-defaults"]:
    sys.exit("usage: python -m vast.config --write-defaults   (regenerates config/vast/default_*_cfg.json)")
for path in write_defaults_files(DEFAULTS_DIR):
    print(f"wrote {path}")
