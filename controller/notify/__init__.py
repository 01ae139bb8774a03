"""Notifications: incidents derived from the state DB and the vault, sent to webhooks and email.

Usage::

    from controller.notify.notifier import Notifier
    Notifier(settings).run_once()        # evaluate -> open/resolve incidents -> send due messages and digests

Modules: ``config`` (the `notify` section of $VMBACKUP_HOME/config.yaml), ``events`` (the rules: what is an
incident), ``incidents`` (the tables of schema migration 4: one open incident per kind and subject), ``messages``
(texts and JSON bodies), ``channels`` (signed webhook, SMTP with STARTTLS; retries with back-off), ``notifier``
(one pass, and the thread `vmbackup serve` runs).
"""
