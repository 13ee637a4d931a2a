"""The warehouse layer as SQL models (dbt conventions), each a Dagster asset.

Not built yet: the pipeline's SQL still lives beside the Python stages (`mmsearch/warehouse.py`
holds the schema). The runner and the models are the next piece of work on the tracker.
"""
