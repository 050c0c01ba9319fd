from . import listing_lost  # noqa: F401  (registers its case)
from .cases import main

main()
