"""`python -m edgetl.runtime`: predict and adapt on the device."""

from edgetl.runtime.cli import main

raise SystemExit(main())
