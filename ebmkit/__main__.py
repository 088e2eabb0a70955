r"""`python -m ebmkit`: the `ebmkit` command, also as torchrun runs it (`torchrun -m ebmkit`)."""

import sys

from ebmkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
