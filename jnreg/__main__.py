from jnreg.core.cli import main

main()
