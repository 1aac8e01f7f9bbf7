import sys

from pipeline import threads

threads.prepare_environment()  # before the commands import OpenMP (scikit-learn): read once, when it loads

from pipeline.cli import main  # noqa: E402

sys.exit(main())
