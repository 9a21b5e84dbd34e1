"""Images: datasets (one shared decoded copy per machine, every loader called in one
place) and their partition among the clients.
"""
