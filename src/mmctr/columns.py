"""Column names of the data contract (DATA_CONTRACT.md), for every layer from config up.

The user history is ``item_seq`` (left-padded with 0, most recent last) and the target item is
``item_id``. Imports nothing, so the config checks can name them without loading the reader.
"""

HISTORY_COL = "item_seq"
TARGET_COL = "item_id"
