"""Where bytes come from and go to: workdir storage (local or s3://, by scheme: ``storage``), the input
readers (JSON lines, gzip, CloudWatch exports; bad lines counted, never lost: ``readers``) and the JSON
scanner for values not parsed whole (``jsonscan``)."""
