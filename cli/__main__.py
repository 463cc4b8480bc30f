"""`python -m cli ...` runs `nanoinspect ...` (tests, torchrun, a checkout without the script)."""

from cli import app

app()
