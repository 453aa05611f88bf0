"""Measuring: an adapter (or several, in shared forwards) scored on a task's items (`scoring`),
methods compared in tables with paired CIs (`compare`), and held-out perplexity on offline text (`lm`)."""
