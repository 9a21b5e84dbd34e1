"""The Flower apps and what a client does with a message: the ClientApp and ServerApp (thin),
the client's work (prepare its disguised data, train, evaluate), the ClientApp's link to its
SuperNode's warm worker, and Flower's retry wait shortened.
"""
