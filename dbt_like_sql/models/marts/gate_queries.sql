{{ config(materialized='view') }}
-- Labeled queries held out from training and from the reported evaluation: the promotion gate
-- scores candidate and live releases on them.
select * from {{ ref('stg_labeled_queries') }} where split = 'gate'
