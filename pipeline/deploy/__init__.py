"""Deployment artefacts for scheduled runs, generated from the one configuration and printed, never applied.

``auditsift deploy stepfunctions``  the Amazon States Language definition of one scheduled run
``auditsift deploy schedule``       the EventBridge Scheduler CreateSchedule request that starts it
``auditsift deploy iam``            least-privilege policies (and trust policies) for every role involved
``auditsift deploy processing``     the scale-out features CreateProcessingJob requests (map and reduce)
``auditsift deploy athena``         the Athena/Glue table over the archive and example analyst queries
``auditsift deploy cron``           the crontab line for hosts without Step Functions

Everything lives under one workdir ``s3://<deploy.bucket>/<prefix>`` (``--prefix``, default
``auditsift``); the configuration the containers read is uploaded to ``<workdir>/deploy/config.yaml``.
Missing values stop with one line naming the configuration key. docs/operations.md shows the
state diagram, the roles and how to apply each artefact.

The builders are pure (no click, no boto3): ``names`` (what the artefacts name), ``processing``, ``asl``,
``schedule``, ``iam``, ``athena``; ``pipeline/cli/deploy.py`` prints them.
"""
