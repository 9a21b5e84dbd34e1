"""Deployment: real Flower processes (SuperLink, SuperNodes) on loopback or a
remote SuperLink, their ports, TLS, the run's submission and its clean-up. The SuperNode
launcher and its warm worker live in supernode/, which nothing outside this folder imports.
"""
