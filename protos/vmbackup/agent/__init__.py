"""The vmbackup guest agent protocol."""
