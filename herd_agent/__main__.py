"""`python -m herd_agent` runs the same CLI as the `herd-agent` console script."""

from herd_agent.cli import main

if __name__ == "__main__":
    main()
