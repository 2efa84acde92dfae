import sys

from cymqtt.bench.cli import main

sys.exit(main())
