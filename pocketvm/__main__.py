from pocketvm.cli import entry

entry()
