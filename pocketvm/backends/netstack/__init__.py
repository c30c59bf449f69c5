"""Parsing and building of the packets the user-mode network speaks.

One module per protocol. Parsers take untrusted bytes from the guest and
return None for anything malformed (never raise on bad input); builders
produce complete packets with their checksums filled in.
"""
