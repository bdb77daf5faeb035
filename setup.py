"""
Packaging for medichat: a STOMP-over-WebSocket chat backend built on Twisted.
"""

from setuptools import setup

setup(
    name="medichat",
    version="0.1.0",
    description="Real-time chat between customers and nurses: STOMP 1.2 over WebSocket, "
    "a JSON REST API, on Twisted.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[
        "medichat",
        "medichat.app",
        "medichat.auth",
        "medichat.carriers",
        "medichat.domain",
        "medichat.http",
        "medichat.pubsub",
        "medichat.stomp",
        "medichat.store",
        "twisted.plugins",
    ],
    package_data={
        "medichat": ["py.typed"],
        "medichat.http": ["openapi.json"],
        "medichat.store": ["migrations/*/*.sql"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls] >= 24.7, < 27",
        "autobahn >= 24.4, < 27",
        "wsaccel >= 0.6.6, < 1",
        "klein >= 24.8, < 26",
        "txpostgres >= 1.7, < 2",
        "psycopg2-binary >= 2.9.9, < 3",
        "pyjwt[crypto] >= 2.8, < 3",
        "treq >= 24.9, < 27",
        "argon2-cffi >= 23.1, < 26",
        "prometheus-client >= 0.20, < 1",
        "attrs >= 23.2",
        "zope.interface >= 6",
    ],
    extras_require={
        "test": [
            "hypothesis >= 6.100, < 7",
            "openapi-spec-validator >= 0.7, < 1",
            "stomp.py >= 8.1, < 10",
        ],
        "dev": [
            "mypy >= 1.10",
            "mypy-zope >= 1.0",
            "ruff >= 0.5",
            "tox >= 4",
        ],
    },
    entry_points={
        "console_scripts": ["medichat-admin = medichat.app.admin:main"],
    },
    zip_safe=False,
)
