"""Running the notebooks and writing what they report: `run` (papermill over every notebook, run
times), `report` (a notebook's metrics.json and figures, REPORT.md), `plots` (the seaborn theme and
shared figures), `params` (checking a notebook's parameters)."""
