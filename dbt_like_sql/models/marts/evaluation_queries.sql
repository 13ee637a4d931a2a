{{ config(materialized='view') }}
-- Labeled queries held out from training: the only ones evaluation scores.
select * from {{ ref('stg_labeled_queries') }} where split = 'test'
