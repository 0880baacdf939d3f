from marsdiff.cli import main

raise SystemExit(main())
