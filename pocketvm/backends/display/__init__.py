"""The display backend: the screen model and what shows it remotely (RFB, the web page)."""
