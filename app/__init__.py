"""The top layer: the web app's pages and views (``app/ui``) and the root of the ``tether`` command (``app/cli.py``),
which mounts every package's commands. Nothing below imports it."""
