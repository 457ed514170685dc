"""``python -m ofa_deploy.cli ARGS`` (what ``torchrun -m ofa_deploy.cli train ...`` runs): the console script."""

from . import main

main()
