from cymqtt.cli import main

raise SystemExit(main())
