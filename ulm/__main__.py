from ulm.cli import main

raise SystemExit(main())
