from mirage_desktop.cli import main

raise SystemExit(main())
