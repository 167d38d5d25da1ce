"""The model layer: loading, building and running the models that selectors use.

It serves selectors without knowing them: functions take records, texts or token ids and
return arrays. Heavy libraries (torch, transformers) are imported inside functions.
"""
