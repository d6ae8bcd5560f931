"""An OpenAI-compatible proxy in front of serving: production traffic becomes samples.

Clients call loopd instead of vLLM, with one stable model name (``proxy.model_name``)
that always reaches the live adapter, so no client changes names across swaps and a
swap fails no request. Every completion served is detected and stored (``recorder``);
looping streams can be stopped as they loop (``stream``). The steps of a request are in
``service``; ``server`` runs it all on a thread of the daemon.
"""

from loopd.proxy.server import ProxyServer, build_app

__all__ = ["ProxyServer", "build_app"]
