"""`python -m fedisguise run|compare|keygen …`: the `fedisguise` command."""

import sys

from fedisguise.cli import command

sys.exit(command())
