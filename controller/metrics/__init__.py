"""Prometheus metrics of the controller, read from the state DB and the vault at scrape time.

``collector.VmBackupCollector`` builds the metric families (the list is in its module docstring);
``server.start(settings, "127.0.0.1:9470")`` serves them, as `vmbackup serve --metrics HOST:PORT` does.
"""
