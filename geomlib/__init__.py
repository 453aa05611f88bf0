"""geomlib: the geometric ideas of seeds 000, 001, 003 and 004, each implemented with the
seed's public names and measured against the best established method (notebooks 10–13)."""
