"""geomlib: the geometric ideas of seeds 000, 001, 003 and 004, each implemented with the seed's public
names and measured against the best established method (notebooks 10–13): `igbundle`, `calabi`,
`coordinates`, `inl`, one package per seed. geomlib imports llgbm's `core` and `eval` only."""


def lazy_exports(package: str, exports: dict[str, str]):
    """A module `__getattr__` for `package`'s public names ({name: submodule}): each submodule (and
    torch with it) is imported on first use, so `python -m geomlib.<seed> --help` answers at once."""
    from importlib import import_module

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)
    return __getattr__
