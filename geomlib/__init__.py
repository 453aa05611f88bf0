"""geomlib: the geometric ideas of seeds 000, 001, 003 and 004, each implemented with the seed's public
names and measured against the best established method (notebooks 10–13): `igbundle`, `calabi`,
`coordinates`, `inl`, one package per seed. geomlib imports llgbm's `core` and `eval` only."""
