"""The submission loop of `python -m inference.predict`, by job: options, images, members, row, loop, supervisor, cli."""
