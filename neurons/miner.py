"""PRISM miner entry point: parse the flags, build the config, serve until SIGTERM/SIGINT.

    python neurons/miner.py --netuid N --wallet.name W --wallet.hotkey H \\
        --submission path/to/project --axon.port 8091 --axon.external_ip 203.0.113.7

See docs/miner.md for every flag.
"""

from __future__ import annotations

from prism.miner import main

if __name__ == "__main__":
    raise SystemExit(main())
