"""``python -m hookyard`` is the ``hookyard`` command."""

from .cli import main

if __name__ == "__main__":
    main()
