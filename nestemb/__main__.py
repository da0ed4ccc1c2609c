from nestemb.cli import main

main()
