"""Vipps MobilePay client: typed calls, token cache, webhook signatures, error tree.

Knows nothing of the database or FastAPI.
"""
