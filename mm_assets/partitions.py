"""One dynamic partition per catalog drop, named like its folder in `$MM_HOME/landing/`."""

from dagster import DynamicPartitionsDefinition

catalog_drops = DynamicPartitionsDefinition(name="catalog_drops")
