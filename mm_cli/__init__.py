"""The `mmsearch` command line: the one place that joins the Dagster pipeline and the search core."""
