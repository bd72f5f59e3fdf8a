from jnreg.cli import main

main()
