"""The ``vmbackup`` command line: one ``*_cmd.py`` module per command, each a thin layer over the core."""
