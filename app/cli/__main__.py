"""``python -m app.cli``: the same as the ``vipps-pos`` console script."""

from app.cli import main

main()
