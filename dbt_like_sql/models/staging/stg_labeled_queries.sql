{{ config(materialized='view') }}
-- Labeled queries from the drops, with the split decided by a hash of query_id.
select query_id, drop_name, text, image_file, image_sha, relevant, kind, split
from {{ source('warehouse', 'labeled_queries') }}
