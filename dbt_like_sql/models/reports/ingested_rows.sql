{{ config(materialized='incremental', unique_key='row_key') }}
-- Every raw row ever ingested, kept after its drop is replaced: an append-only ledger.
select
    drop_name || ':' || row_number as row_key,
    drop_name,
    row_number,
    product_id,
    ingested_at
from {{ source('warehouse', 'raw_products') }}
{% if is_incremental() %}
where drop_name || ':' || row_number not in (select row_key from {{ this }})
{% endif %}
