{{ config(materialized='incremental', unique_key='row_key') }}
-- Every raw row ever ingested, kept after its drop is replaced: an append-only ledger.
-- An incremental run replaces the rows whose row_key its query returns (dbt's delete+insert),
-- so the filter below keeps each row as first ingested (a re-ingested drop adds only new rows).
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
