"""Errors of notifications (the `notify` section of the controller config, webhook and email delivery)."""

from __future__ import annotations

from controller.errors import VmBackupError


class NotifyConfigInvalid(VmBackupError):
    """The `notify` section of $VMBACKUP_HOME/config.yaml is not valid (the message names file, line and field)."""

    code = "NOTIFY_CONFIG_INVALID"
    operation = "notify"
    remediation = (
        "Correct the field the message names in $VMBACKUP_HOME/config.yaml (see the README's 'Alerts and metrics'), "
        "then run `vmbackup notify test` to check it."
    )


class NotifyChannelUnknown(VmBackupError):
    """A channel name was asked for that the config does not define."""

    code = "NOTIFY_CHANNEL_UNKNOWN"
    operation = "notify"
    remediation = "Use a channel name from the `notify: channels:` list of $VMBACKUP_HOME/config.yaml."


class NotifyNotConfigured(VmBackupError):
    """No notification channel is configured, so there is nothing to send to."""

    code = "NOTIFY_NOT_CONFIGURED"
    operation = "notify"
    remediation = (
        "Add a `notify:` section with at least one webhook or email channel to $VMBACKUP_HOME/config.yaml "
        "(see the README's 'Alerts and metrics')."
    )


class NotifyDeliveryFailed(VmBackupError):
    """A message could not be delivered to a channel after its retries (the message says why)."""

    code = "NOTIFY_DELIVERY_FAILED"
    operation = "notify"
    remediation = (
        "Check that the channel's receiver is reachable from the controller and accepts the message (webhook: "
        "URL, TLS certificate, the receiver's answer; email: SMTP host, port, STARTTLS, credentials), then run "
        "`vmbackup notify test --channel NAME`."
    )
