from pocketvm.cli import main

main()
