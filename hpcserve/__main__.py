from hpcserve.cli import main

main()
