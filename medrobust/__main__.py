from medrobust.cli import main

raise SystemExit(main())
