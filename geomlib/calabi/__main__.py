"""`python -m geomlib.calabi`: the seed's demo (its main.py)."""
from .svd import main

if __name__ == "__main__":
    main()
