"""Comparison grids (`run.py --compare`) and what is made from them: the spec (a compare file
into cells), fair tuning, resume, the runner, more seeds where an interval leaves a sign open,
each row's reference, the rows' figures and intervals, the strongest attack per level, the
frontier, table.md and plots, report.html, and the results page."""
