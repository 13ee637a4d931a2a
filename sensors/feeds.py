"""The feed sensor: polls the shop's own feed (`MM_FEED_URL`, a Google Merchant Center or Shopify
export) and, when it changed, lands it in `$MM_HOME/landing/` as a catalog drop, which the drop
sensor then ingests like any other.

The feed is fetched with a conditional request (ETag / Last-Modified from the home's fetch
cache); a server that sends neither is compared by content hash (the cursor), so an unchanged
feed lands nothing. Its images are fetched under the same address policy as `mmsearch ingest`.
"""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from resources import PipelineSettings, WarehouseResource

FEED_POLL_SECONDS = 300


@sensor(
    minimum_interval_seconds=FEED_POLL_SECONDS,
    description=__doc__,
    default_status=DefaultSensorStatus.RUNNING,
)
def shop_feed_sensor(
    context: SensorEvaluationContext, warehouse: WarehouseResource, settings: PipelineSettings
):
    if not settings.feed_url:
        return SkipReason("no feed URL configured (MM_FEED_URL)")
    # The fetcher (httpx) loads only where a feed is configured.
    from mmsearch.catalog.drops import DropRejected
    from mmsearch.catalog.feeds import FeedRejected, land_feed
    from mmsearch.catalog.fetch import (
        MAX_FEED_BYTES,
        AddressPolicy,
        FetchCache,
        Fetcher,
        FetchRefused,
        fetch_cache_dir,
        parse_allow_hosts,
    )

    layout = warehouse.layout
    policy = AddressPolicy(parse_allow_hosts(settings.fetch_allow_hosts))
    with Fetcher(policy, FetchCache(fetch_cache_dir(layout.root))) as fetcher:
        try:
            feed = fetcher.get(settings.feed_url, MAX_FEED_BYTES)
        except FetchRefused as refused:
            return SkipReason(f"feed {settings.feed_url} not fetched: {refused.message}")
        if feed.sha256 == context.cursor:
            how = "content hash" if feed.downloaded else "304 Not Modified"
            return SkipReason(f"feed {settings.feed_url} unchanged ({how})")
        try:
            landed = land_feed(
                settings.feed_url, feed.data, layout.landing, fetcher, settings.image_limits()
            )
        except (FeedRejected, DropRejected) as rejected:
            context.update_cursor(feed.sha256)  # the same bytes would be refused again
            return SkipReason(str(rejected))
    context.update_cursor(feed.sha256)
    context.log.info(
        f"feed {settings.feed_url} landed as drop {landed['drop']}: {landed['rows']} rows, "
        f"{landed['images']['fetched']} images, {landed['images']['failed']} failed"
    )
    return SkipReason(f"landed as drop {landed['drop']}; the drop sensor ingests it")
