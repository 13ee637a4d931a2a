{{ config(materialized='view') }}
-- One row per live product: the text and (when present) the image the fusion model pairs.
select
    p.product_id,
    d.document,
    d.text_sha,
    p.image_sha,
    p.image_file,
    p.image_sha is not null as has_image
from {{ ref('stg_products') }} p
join {{ ref('product_documents') }} d using (product_id)
