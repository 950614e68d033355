"""k3stack: bare Linux servers → K3s → Open WebUI + Ollama + PostgreSQL + Redis + Netdata, with TLS.

The library behind tasks.py. One module per concern (see README, "Layout"); nothing here
prints except through k3stack.console.
"""

__version__ = "0.1.0"
