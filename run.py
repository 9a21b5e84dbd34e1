#!/usr/bin/env python
"""The checkout's entry point: `python run.py [--config FILE | --compare GRID] [options]`,
as the README's lines use it. A thin shim over fedisguise.cli, which the installed
`fedisguise` command runs too (`fedisguise run NAME`, `fedisguise compare NAME`)."""

import sys

from fedisguise.cli import DEFAULT_CONFIG, is_compare_file, main  # noqa: F401 - run.main

if __name__ == "__main__":
    sys.exit(main())
