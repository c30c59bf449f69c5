"""Code and files that run inside the guest, shipped into images by pocketvm.images."""
