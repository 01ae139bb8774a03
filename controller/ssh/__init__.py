"""SSH into guests: the one paramiko client setup (``client.py``) used by registration, boot-check and the lab."""
