"""Results: the SQLite store, the one-writer lock, leaderboards and their site, rescoring.

Reads and writes what the runner measured; recomputes nothing but scores (rescore).
"""
