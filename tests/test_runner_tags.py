"""The run tags `mmsearch run` writes by name are the ones the installed Dagster reads: its
daemon skips a sensor request whose run key a run already carries only if the names match."""

from dagster._core.storage import tags as dagster_tags

from mm_assets import runner


def test_the_run_tags_written_by_name_are_dagsters_own():
    assert runner.PARTITION_NAME_TAG == dagster_tags.PARTITION_NAME_TAG
    assert runner.SENSOR_NAME_TAG == dagster_tags.SENSOR_NAME_TAG
    assert runner.RUN_KEY_TAG == dagster_tags.RUN_KEY_TAG
