"""The bench (the top floor: it may import any stage and nothing imports it): every hot path timed
against this machine's fp32 peak (`hotpaths`), run as `python -m llgbm.bench --profile quick`."""
