from pocketvm.main import main

main()
