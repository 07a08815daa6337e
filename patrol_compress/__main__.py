"""``python -m patrol_compress`` (used by torchrun) runs the CLI."""

from patrol_compress.cli.app import main

if __name__ == "__main__":
    main()
