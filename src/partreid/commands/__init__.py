"""The commands' glue: each module turns one ``partreid`` command's arguments into calls of the
libraries below (extract, export, index/search, ingest, the store's search/delete/stats) and
prints or writes the answer. Only :mod:`partreid.cli` imports this room."""
