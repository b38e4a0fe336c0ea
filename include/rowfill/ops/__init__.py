"""The ``rowfill`` command and its terminal views.
"""
