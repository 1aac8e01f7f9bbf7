import sys

from pipeline.runtime import threads

threads.prepare_environment()  # before the commands import OpenMP (scikit-learn): read once, when it loads

from pipeline.cli.main import main  # noqa: E402

sys.exit(main())
