"""`python -m tasks.train --config …`: the training entrypoint a launcher or a pod runs."""

import sys

from tasks.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
