from rollbackd.cli import main

raise SystemExit(main())
