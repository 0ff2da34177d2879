"""`python -m jaxlab.cli ...` is the `jaxlab` command."""

from jaxlab.cli.commands import main

if __name__ == "__main__":
    main()
