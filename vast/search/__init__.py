"""`vast embed | search | caption | ask | serve`: the model on your own videos (see commands.py)."""
