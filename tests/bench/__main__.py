from .cases import main

main()
