"""PRISM validator entry point: parse the flags, build the config, run the loop.

    python neurons/validator.py --netuid 1 --wallet.name validator --wallet.hotkey default \\
        --chain local --chain.path ~/.prism/localnet/chain.sqlite3 --profile local_cpu_smoke

See docs/validator.md for every flag.
"""

from prism.validator import main

if __name__ == "__main__":
    raise SystemExit(main())
