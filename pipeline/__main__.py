"""``python -m pipeline`` runs the auditsift CLI, as the ``auditsift`` executable does."""
from pipeline.launch import main

main()
