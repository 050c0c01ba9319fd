from . import beside_walk, listing_lost  # noqa: F401  (register their cases)
from .cases import main

main()
