"""`python -m aiaas.cli …` is `aiaas …`."""

from aiaas.cli.main import main

raise SystemExit(main())
