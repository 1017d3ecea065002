"""``python -m app.cli``: the same as the ``vipps-pos`` console script."""

from app.cli import main

# Guarded: ``serve --workers N`` starts its processes with multiprocessing's "spawn", which
# imports this module again in each of them (as ``__mp_main__``); it must not run the CLI there.
if __name__ == "__main__":
    main()
