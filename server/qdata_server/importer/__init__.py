"""`qdata-server import`: loads a JSON Lines dump of the old services' dictionaries (docs/import.md).

dump.py reads and validates the dump (every bad record, with its path, before anything is written);
run.py imports the valid users through the domain functions, resumably, and reconciles.
"""
