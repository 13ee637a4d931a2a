{{ config(materialized='table') }}
-- Per drop: how its rows ended and the price range of its live products.
with outcomes as (
    select
        drop_name,
        count(*) filter (where outcome = 'live') as live,
        count(*) filter (where outcome = 'replaced') as replaced,
        count(*) filter (where outcome = 'deleted') as deleted,
        count(*) filter (where outcome = 'quarantined') as quarantined
    from {{ source('warehouse', 'row_outcomes') }}
    group by drop_name
),
prices as (
    select drop_name, min(price) as min_price, max(price) as max_price, avg(price) as avg_price
    from {{ ref('stg_products') }}
    group by drop_name
)
select
    d.name as drop_name,
    d.seq,
    d.status,
    d.rows_read,
    coalesce(o.live, 0) as live,
    coalesce(o.replaced, 0) as replaced,
    coalesce(o.deleted, 0) as deleted,
    coalesce(o.quarantined, 0) as quarantined,
    coalesce(o.quarantined, 0) / greatest(d.rows_read, 1) as quarantine_rate,
    p.min_price,
    p.max_price,
    p.avg_price
from {{ source('warehouse', 'drops') }} d
left join outcomes o on o.drop_name = d.name
left join prices p on p.drop_name = d.name
