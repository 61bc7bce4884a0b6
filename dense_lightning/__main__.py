"""``python -m dense_lightning``: the same command as ``dense-lightning``."""

from dense_lightning.cli import main

if __name__ == "__main__":
    main()
