import sys

from ttsft_daemon.cli import main

sys.exit(main())
