"""``python -m pipeline`` runs the auditsift CLI."""
from pipeline.cli import main

main()
