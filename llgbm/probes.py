"""Seed 002's `llgbm.probes` names, kept where it puts them (the code is `llgbm.delta.probes`)."""
from llgbm.delta.probes import create_domain_probes, create_generic_probes  # noqa: F401
