"""``python -m herd_sandbox`` = ``herd-sandbox``."""

from herd_sandbox.cli import main

main()
