"""`python -m edgetl` (and `torchrun -m edgetl`) run the CLI."""

from edgetl.cli import main

raise SystemExit(main())
