"""Generation backends behind one ``Generator`` protocol (see ``base.py``)."""
