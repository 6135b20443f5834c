"""``python -m hfserve``."""

from hfserve.cli.main import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess
    main()
