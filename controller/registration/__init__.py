"""Registration: put the guest agent into VMs over SSH (bundle, install, upgrade, unregister)."""
