from mipart.cli import main

main()
