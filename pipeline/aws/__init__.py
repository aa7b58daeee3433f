"""AWS adapters: S3 workdir and inputs, CloudWatch Logs polling, SageMaker Random Cut Forest.

The only package (with the CLI) that imports boto3 or SageMaker code; ``features/`` and
``training/`` stay pure. Every client comes from ``pipeline.aws.session.client`` and
every final AWS failure surfaces as one ``AwsCallError`` line naming the call.
"""
