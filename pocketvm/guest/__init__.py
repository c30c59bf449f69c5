"""Code and files that run inside the guest, shipped into images by pocketvm.images.

`agent.py` is the guest agent (docs/agent-protocol.md): self-contained,
Python 3 standard library only, listening on vsock port 52. The Debian image
installs it with the unit in debian/config/pocketvm-agent.service.
"""
