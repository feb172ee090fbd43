"""What each worker calls once a second (``python -m relmod.workers /project/app.py:main``)."""

from .greeting import TEXT  # app depends on greeting: a save of greeting.py reloads both


def main() -> str:
    return TEXT
