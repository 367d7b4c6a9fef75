"""Static type checks of user-facing code; run them with ``python -m tests.typecheck``."""
