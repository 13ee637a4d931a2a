{{ config(materialized='view') }}
-- Live products as the cleaning stage left them: one row per product_id, latest drop winning.
select
    product_id,
    title,
    description,
    category,
    brand,
    price,
    image_file,
    image_sha,
    image_phash,
    attributes,
    drop_name,
    row_number
from {{ source('warehouse', 'clean_products') }}
