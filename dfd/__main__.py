from dfd.cli import main

main()
