"""The model layer: the toolkit every selector builds on, and nothing that knows a selector.

Functions take records, texts or token ids and return arrays; heavy libraries (torch,
transformers) are imported inside functions. What a selector (or a plugin) reaches for:

- :mod:`~tamis.models.proxies`: ``ProxySpec`` and ``obtain_proxy`` (build a small GPT-2 from the
  pool or warm up a given model, through the proxy cache), ``proxy_ref``/``load_proxy`` for workers;
- :mod:`~tamis.models.lm`: ``encode_for_model`` (records to token ids and loss masks, cut to
  ``positions``: the run's max_length or the model's positions, whichever is fewer);
- :mod:`~tamis.models.stats`: ``mean_token_loss`` (the one mean-token-loss), ``sequence_stats``
  (with EL2N), per-example gradients and their norms;
- :mod:`~tamis.models.embedder`: ``open_embedder`` (pooled hidden states; remote models copied
  to the worker first) and ``model_record`` for the manifest;
- :mod:`~tamis.models.heads`: classifier heads on frozen features (train, cache, score);
- :mod:`~tamis.models.records`: a record's text, user turns, label, and ``is_labelled``;
- :mod:`~tamis.models.features`: a content-keyed store of computed feature arrays.
"""
