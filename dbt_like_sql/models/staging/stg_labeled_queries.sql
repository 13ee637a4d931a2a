{{ config(materialized='view') }}
-- Labeled queries from the drops, split by target product and template
-- (mmsearch/splits.py): train, gate, test or unused.
select query_id, drop_name, text, image_file, image_sha, image_phash, relevant, kind, split
from {{ source('warehouse', 'labeled_queries') }}
