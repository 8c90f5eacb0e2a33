"""`python -m ssmc` is the `ssmc` command."""
from .cli import main

main()
