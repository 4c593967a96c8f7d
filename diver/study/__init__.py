"""What a study *is*, independent of how it runs: the token budget (``budget``).

Modules here are pure functions of a config; nothing imports training, launching or
tracking from them.
"""
