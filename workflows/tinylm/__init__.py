"""tinylm: a miniature speculative-decoding pipeline in numpy (the speculator example).

A character-level target transformer trained on the Python standard library's own source,
served over HTTP; data sampled from it; a 1-layer draft distilled on that data; greedy
speculative decoding measured against the target alone.
"""
