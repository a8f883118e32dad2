from cdclip.cli import main

raise SystemExit(main())
