"""The server's own network reach: requests to URLs that someone else chose.

``addresses`` says which IP addresses such a request may reach; ``outbound`` resolves a host
once, checks every answer and connects to exactly the address it checked.
"""
