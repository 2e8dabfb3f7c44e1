"""``python -m radlvlm`` runs the command line."""

from radlvlm.cli import run

run()
