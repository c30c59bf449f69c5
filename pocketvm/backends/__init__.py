"""Host-side backends for guest devices: disk images, networks."""
