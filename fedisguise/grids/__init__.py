"""Comparison grids (`run.py --compare`): spec, tuned, runner, figures, table."""
