"""Study ``wikiseq``: the two-tower v1/v2 failure comparison on a text-embedding bank.

A GRU query tower reads ``ctx_len`` consecutive chunk vectors of an article and must
retrieve the next chunk from the whole bank. Modules: ``bank`` (the chunk vectors),
``data`` (context windows and the cached pairs), ``towers``, ``train``, ``evaluate``,
``steps`` (params and the cached steps prepare -> train -> evaluate), ``report`` and
``analysis`` (the report and its verdict), ``bench`` (full-bank search timing).
"""
