{{ config(materialized='view') }}
-- Labeled queries the fusion model may learn from.
select * from {{ ref('stg_labeled_queries') }} where split = 'train'
