"""``python -m commander_os`` is the ``commander-os`` command."""

from commander_os.cli import main

main()
