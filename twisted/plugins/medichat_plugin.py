"""
Makes C{twistd medichat} available.
"""

from twisted.application.service import ServiceMaker

medichat = ServiceMaker(
    "medichat",
    "medichat.app.tap",
    "Chat between customers and nurses over STOMP/WebSocket and a JSON REST API.",
    "medichat",
)
