"""When scheduled runs start: the EventBridge Scheduler request that starts the state machine, and the
crontab line (``auditsift cron`` through scripts/auditsift-cron) for hosts without Step Functions."""
from __future__ import annotations

import json
import re
import shlex

from pipeline.config import Config
from pipeline.deploy.names import (
    account_id,
    partition,
    require,
    state_machine_name,
)
from pipeline.errors import ConfigError


def schedule_request(config: Config, role_arn: str, state_machine_arn: str | None = None) -> dict:
    """EventBridge Scheduler CreateSchedule: config.schedule.expression (UTC) starts the state machine.

    The input carries the scheduled time for the record; the run's ranges come from the
    execution's start time (the Plan step).
    """
    expression = config.schedule.expression
    if not re.fullmatch(r"(cron|rate|at)\(.+\)", expression):
        raise ConfigError(f"schedule.expression {expression!r} is not an EventBridge Scheduler expression",
                          hint="e.g. cron(15 6 * * ? *) or rate(1 day)")
    if not state_machine_arn:
        region = require(config, "aws.region")
        state_machine_arn = (f"arn:{partition(region)}:states:{region}:{account_id(config)}:stateMachine:"
                             f"{state_machine_name(config)}")
    return {
        "Name": f"auditsift-{config.cluster}"[:64],
        "GroupName": "default",
        "Description": f"auditsift scheduled run for EKS cluster {config.cluster}"[:512],
        "ScheduleExpression": expression,
        "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Target": {
            "Arn": state_machine_arn,
            "RoleArn": role_arn,
            "Input": json.dumps({"source": "eventbridge-scheduler", "scheduled_time": "<aws.scheduler.scheduled-time>"}),
            "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
        },
    }


_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_CRON = re.compile(r"cron\((.+)\)")
_DOW_VALUE = re.compile(r"\d+")


def _weekday_field(field: str) -> str:
    """EventBridge numbers weekdays 1-7 from Sunday, cron 0-6: shift the numbers, keep names and steps."""
    if any(mark in field for mark in ("L", "#")):
        raise ConfigError(f"schedule.expression day-of-week {field!r} has no crontab equivalent",
                          hint="use plain days, ranges or lists (MON-FRI, 2-6, 1,4)")
    shifted = []
    for item in field.split(","):
        base, _, step = item.partition("/")
        base = _DOW_VALUE.sub(lambda m: str(int(m.group()) - 1), base)
        shifted.append(f"{base}/{step}" if step else base)
    return ",".join(shifted)


def crontab_schedule(expression: str) -> str:
    """The five crontab fields for an EventBridge ``cron(...)`` or whole-unit ``rate(...)`` expression."""
    rate = _RATE.fullmatch(expression)
    if rate:
        value, unit = int(rate.group(1)), rate.group(2).rstrip("s")
        if unit == "minute" and 0 < value < 60 and 60 % value == 0:
            return f"*/{value} * * * *"
        if unit == "hour" and 0 < value < 24 and 24 % value == 0:
            return f"0 */{value} * * *"
        if unit == "day" and value == 1:
            return "0 0 * * *"
        raise ConfigError(f"schedule.expression {expression!r} has no exact crontab equivalent",
                          hint="use cron(...) or a rate that divides an hour or a day")
    match = _CRON.fullmatch(expression)
    fields = match.group(1).split() if match else []
    if len(fields) != 6:
        raise ConfigError(f"schedule.expression {expression!r} is not cron(min hour day month weekday year) or rate(...)",
                          hint="e.g. cron(15 6 * * ? *)")
    minute, hour, day, month, weekday, year = fields
    if year not in ("*", "?"):
        raise ConfigError(f"schedule.expression year {year!r} has no crontab equivalent", hint="use * for the year")
    if any(mark in day for mark in ("L", "W")):
        raise ConfigError(f"schedule.expression day-of-month {day!r} has no crontab equivalent", hint="use plain days")
    day = "*" if day == "?" else day
    weekday = "*" if weekday in ("?", "*") else _weekday_field(weekday)
    return " ".join((minute, hour, day, month, weekday))


def crontab_line(config: Config, config_path: str | None, workdir: str, inputs: list[str],
                 script: str = "/opt/auditsift/scripts/auditsift-cron", log_file: str = "/var/log/auditsift-cron.log") -> str:
    """A comment and the crontab line running scripts/auditsift-cron at ``schedule.expression``.

    EventBridge expressions are UTC and cron uses the host's zone: the comment says so.
    Without ``inputs`` the run archives the cluster's CloudWatch log group.
    """
    arguments = [script, "--workdir", workdir]
    if config_path:
        arguments += ["--config", config_path]
    if inputs:
        for item in inputs:
            arguments += ["--input", item]
    else:
        arguments += ["--from-cloudwatch", config.deploy.log_group or f"/aws/eks/{config.cluster}/cluster"]
    command = " ".join(shlex.quote(item) for item in arguments).replace("%", r"\%")
    return (f"# auditsift scheduled run for cluster {config.cluster}: {config.schedule.expression} is UTC; "
            "the host's cron must run in UTC (or shift the hour)\n"
            f"{crontab_schedule(config.schedule.expression)} {command} >> {shlex.quote(log_file)} 2>&1")
