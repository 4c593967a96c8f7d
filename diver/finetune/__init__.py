"""Downstream evaluation (SPEC §5): task files, task sets, fine-tuning, baselines, metrics.

- ``tasks``: task YAML -> validated :class:`TaskConfig`;
- ``taskset``: a task's recordings -> Parquet task set of labelled, preprocessed trials
  (``laplacian`` re-references iEEG);
- ``splits``: train / validation / test folds over recordings, subjects or trials;
- ``recipes``, ``heads``, ``train``: the two recipes of SPEC §5, their heads, the loop;
- ``baselines``: the Linear (STFT + logistic regression) baseline; ``metrics``: scores
  and mean ± SEM;
- ``embed``: per-window embeddings of new recordings; ``cli``: the commands.
"""
