"""Files installed into the Debian guest image (see pocketvm.images.rootfs)."""
