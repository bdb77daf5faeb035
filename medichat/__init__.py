"""
medichat: real-time chat between customers of a medical information service and nurses.

Customers and employees talk STOMP 1.2 over WebSocket and use a small JSON REST API.
"""

__version__ = "0.1.0"
