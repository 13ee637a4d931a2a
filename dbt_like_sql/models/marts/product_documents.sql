{{ config(materialized='table') }}
-- The one place that decides which fields make up the text the text encoder reads:
-- "<title>. <category>. by <brand>. <description>", at most 1,000 characters.
with parts as (
    select
        product_id,
        concat_ws('. ',
            title,
            nullif(category, ''),
            case when coalesce(brand, '') <> '' then 'by ' || brand end
        ) as head,
        nullif(description, '') as description
    from {{ ref('stg_products') }}
),
documents as (
    select
        product_id,
        left(case when description is null then head else head || '. ' || description end, 1000)
            as document
    from parts
)
select product_id, document, sha256(document) as text_sha
from documents
