{{ config(materialized='table') }}
-- Per category: live products, share with an image, price range.
select
    coalesce(category, '(none)') as category,
    count(*) as products,
    avg(case when image_sha is not null then 1.0 else 0.0 end) as image_share,
    min(price) as min_price,
    avg(price) as avg_price,
    max(price) as max_price
from {{ ref('stg_products') }}
group by 1
