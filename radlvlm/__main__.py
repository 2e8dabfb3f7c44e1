"""``python -m radlvlm`` runs the command line."""

from radlvlm.cli import app

app(prog_name="radlvlm")
