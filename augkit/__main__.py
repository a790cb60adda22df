from augkit.cli import main

main()
