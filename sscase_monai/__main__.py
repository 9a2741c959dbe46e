"""``python -m sscase_monai`` runs the command-line interface."""

import sys

from sscase_monai.cli import main

sys.exit(main())
