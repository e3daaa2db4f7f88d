"""`python -m mpp.cli`: the `mpp` command."""

from mpp.cli.main import main

raise SystemExit(main())
