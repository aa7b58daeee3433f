"""The pipeline's stages, in the order a run calls them (``run.run_pipeline``; ``auditsift run``):

1. ``archive``   inputs (files, s3://, CloudWatch Logs) -> hour-partitioned Parquet, exactly once
                 (``hour_merge`` merges an hour's rows; ``workers`` is the process pool)
2. ``ranges``    the training and scoring ranges ending at the run's clock (``clock``)
3. ``features``  per-hour partial aggregates (cached) -> the window feature table, histories, rule hits
4. ``train``     fit, calibrate and save the configured detector (``training.registry``)
5. ``score``     model scores, rule hits, novelty, suppressions -> ranked, explained findings
6. ``report``    the report files (``pipeline.report`` renders them)
7. ``export``    flagged findings to Security Hub / SNS, when enabled

``scaleout`` runs the features stage as map/reduce and the scheduled run's plan inside SageMaker Processing
jobs (``auditsift container``). Each stage is a function of a ``RunContext`` that raises ``AuditsiftError``
subclasses with one-line messages; the entry points (CLI, Step Functions jobs, cron) call only these.
"""
