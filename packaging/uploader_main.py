"""The executable's entry script: what the `uploader` command of a pip or pipx install runs."""

from uploader.start import main

if __name__ == "__main__":
    main()
