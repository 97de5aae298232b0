"""The public leaderboard: a read-only HTTP page and JSON API over a validator's store.

``prism serve`` (validator side) runs :mod:`prism.leaderboard.server`; ``prism fetch-family``
(miner side) downloads a family's canonical code (:mod:`prism.leaderboard.bundle`) and writes a
``training_for_arch`` starter project around it (:mod:`prism.leaderboard.starter`). Nothing
here imports torch or bittensor. See docs/leaderboard.md.
"""
