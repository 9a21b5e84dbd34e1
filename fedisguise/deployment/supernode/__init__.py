"""A SuperNode as fedisguise launches it: Flower's own SuperNode with shorter polls and
ClientApps forked from a warm zygote (launcher.py), and the node's warm worker that answers
its messages (worker.py). Imported by fedisguise.deployment alone; the ClientApp reaches the
worker over its socket (fedisguise.fl.worker_link).
"""
