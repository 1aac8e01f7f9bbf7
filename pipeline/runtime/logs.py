"""A task's log says what its stage did: libraries' chatter is kept for a log at DEBUG."""

from __future__ import annotations

import logging

# Great Expectations logs ~210 INFO lines while it is first imported ("Skipping registering function ...");
# the others log a line or two per call that says nothing about the stage.
NOISY_LOGGERS = ("great_expectations", "great_expectations.data_context.types.base",  # the second sets INFO itself
                 "matplotlib", "PIL", "numexpr", "fsspec", "urllib3", "asyncio")


def quiet_libraries() -> None:
    """Keep only the warnings of noisy libraries, unless the task logs at DEBUG (then everything shows). Called
    inside each task, before the stage imports them: nothing is configured at import time."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
